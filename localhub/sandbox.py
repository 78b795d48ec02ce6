"""The Space sandbox: every Space's app runs under bubblewrap (`bwrap`, Debian's `bubblewrap` package).

What the app sees (docs/reliability.md, "## localhub", has the threat model and the reasons for bubblewrap):

* files: a fresh root (tmpfs) holding only, read-only, the system (`/usr` and the `/bin` `/lib*` links, a few files of
  `/etc`: loader cache, TLS roots, hosts/resolver, time zone, mime types), the Python that runs localhub (its venv and
  base installation); read-write, its own checkout at `/home/user/app`, its own home `/home/user` (kept across
  restarts of that Space: HF_HOME and caches live there), a `/tmp` and `/dev/shm` of the run. Not the data dir
  (hub.db, blobs, secret.key, the token file), not other Spaces, not the server's code or the user's home.
* processes: its own PID namespace with its own `/proc` (`--unshare-pid --proc /proc`): the server and every other
  process are invisible, so no `/proc/<pid>/environ` or `cmdline` of anyone else. Also its own IPC and UTS
  namespaces. `--die-with-parent`: the app dies with its supervisor.
* identity: uid/gid 65534 with no supplementary groups, no capabilities (bounding set empty) and no_new_privs. As
  root, bwrap builds the sandbox and `setpriv` drops to 65534 (a real host uid distinct from the server's); as any
  other user, bwrap maps uid 65534 in a user namespace (the host uid is then the server's own, but the namespaces
  still hide everything above).
* environment: built from scratch by the supervisor (localhub/spaces_runner.py `_env`): nothing of the server's.
* network: shared (`--share-net`): the app serves its port on loopback and reaches the hub at HF_ENDPOINT.

Where the sandbox cannot be built (no bwrap, no setpriv, or a trivial command fails in it: a kernel without user or
PID namespaces, a container that forbids mounts), Spaces refuse to start with that reason as their BUILD_ERROR,
unless the operator opted in to unsandboxed Spaces for a single-user machine: `--unsafe-spaces`,
`LocalHub(unsafe_spaces=True)` or $LOCALHUB_UNSAFE_SPACES=1.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("localhub")
SANDBOX_UID = SANDBOX_GID = 65534
UNSAFE_ENV = "LOCALHUB_UNSAFE_SPACES"
BWRAP_ENV = "LOCALHUB_BWRAP"  # the bwrap to use, where it is not `bwrap` on PATH
HOME = "/home/user"
APP = f"{HOME}/app"
# Read-only system paths. /usr holds the programs; the top-level names are links into it on merged-/usr systems.
SYSTEM_DIRS = ("/usr",)
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ssl", "/etc/ca-certificates", "/etc/pki",
    "/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/localtime",
    "/etc/timezone", "/etc/mime.types", "/etc/alternatives", "/etc/fonts", "/etc/os-release",
)
PASSWD = f"root:x:0:0:root:/root:/usr/sbin/nologin\nuser:x:{SANDBOX_UID}:{SANDBOX_GID}:Space:{HOME}:/bin/sh\n"
GROUP = f"root:x:0:\nuser:x:{SANDBOX_GID}:\n"


@dataclass
class Sandbox:
    """How Space apps are started on this host: `mode` is "bwrap", "unsafe" (the operator's opt-in) or "refused"."""

    mode: str
    reason: str = ""  # why it was refused, or what runs apps
    bwrap: str = ""
    setpriv: str = ""  # empty when bwrap maps the uid itself (server not root)
    python_dirs: list[str] = field(default_factory=list)
    python_links: list[tuple[str, str]] = field(default_factory=list)  # (target, link) hops outside python_dirs

    @property
    def isolated(self) -> bool:
        return self.mode == "bwrap"

    def command(self, argv: list[str], app: Path, home: Path, tmp: Path, etc: Path) -> list[str]:
        """The argv that runs `argv` (a python command line) in the sandbox; app/home/tmp/etc are host folders."""
        if self.mode != "bwrap":
            return argv
        cmd = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--share-net",
               "--die-with-parent", "--new-session", "--hostname", "space"]
        if self.setpriv:  # root: bwrap builds the sandbox; setpriv (inside) may change uid, nothing else
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        else:
            cmd += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]
        for d in SYSTEM_DIRS:
            cmd += ["--ro-bind", d, d]
        for top in TOP_LEVEL:
            if os.path.islink(top):
                cmd += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                cmd += ["--ro-bind", top, top]
        for path in ETC_FILES:
            cmd += ["--ro-bind-try", path, path]
        cmd += ["--ro-bind", str(etc / "passwd"), "/etc/passwd", "--ro-bind", str(etc / "group"), "/etc/group"]
        made: set[str] = {"/", "/usr", "/etc", "/tmp"}
        cmd += ["--proc", "/proc", "--dev", "/dev", "--bind", str(tmp / ".shm"), "/dev/shm"]  # POSIX semaphores
        cmd += _parents(HOME, made) + ["--bind", str(home), HOME, "--bind", str(app), APP, "--bind", str(tmp), "/tmp"]
        # The Python last: bwrap mounts in order, so a venv or prefix under /tmp (a clone in /tmp/x/.venv) lands on
        # top of the run's private /tmp instead of being hidden by it. Its mount points are made in the run's tmp.
        for d in self.python_dirs:
            cmd += _parents(d, made) + ["--ro-bind", d, d]
        for target, link in self.python_links:  # e.g. /tmp/py/bin/python3 -> /opt/python/bin/python3.11
            cmd += _parents(link, made) + ["--symlink", target, link]
        cmd += ["--chdir", APP, "--"]
        if self.setpriv:
            cmd += [self.setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all", "--"]
        return cmd + argv

    def prepare(self, run_dir: Path, app: Path, home: Path) -> tuple[Path, Path]:
        """Create the run's /tmp and /etc files; hand app, home and tmp to the sandbox user. Returns (tmp, etc)."""
        tmp, etc = run_dir / "tmp", run_dir / "etc"
        tmp.mkdir(exist_ok=True)
        (tmp / ".shm").mkdir(exist_ok=True)
        etc.mkdir(exist_ok=True)
        for name, text in (("passwd", PASSWD), ("group", GROUP)):
            (etc / name).write_text(text)
            (etc / name).chmod(0o644)  # whatever the server's umask: the app's libc reads them
        home.mkdir(parents=True, exist_ok=True)
        (home / "app").mkdir(exist_ok=True)  # the mount point of the checkout
        if self.mode == "bwrap" and self.setpriv:  # root: the app's uid must own what it may write
            for top in (app, tmp):
                _chown_tree(top)
            if home.stat().st_uid != SANDBOX_UID:
                _chown_tree(home)
        return tmp, etc


def _parents(path: str, made: set[str]) -> list[str]:
    """`--dir` with mode 0755 for each missing ancestor of `path` (bwrap makes them 0700, closed to uid 65534)."""
    out: list[str] = []
    parts = Path(path).parts
    for i in range(2, len(parts)):
        d = str(Path(*parts[:i]))
        if d not in made:
            made.add(d)
            out += ["--perms", "0755", "--dir", d]
    return out


def _chown_tree(top: Path) -> None:
    os.chown(top, SANDBOX_UID, SANDBOX_GID)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), SANDBOX_UID, SANDBOX_GID)


def _python_dirs() -> list[str]:
    """What the app's Python needs, read-only: the venv, the base installation, the real executable's folder."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable))}
    keep = []
    for d in sorted({os.path.realpath(d) for d in dirs} | dirs, key=len):
        if d in ("/", "") or _inside(d, (*SYSTEM_DIRS, *keep)):
            continue
        if os.path.isdir(d):
            keep.append(d)
    return keep


def _inside(path: str, dirs) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _python_links(dirs: list[str]) -> list[tuple[str, str]]:
    """The symlinks on the way from sys.executable to the real interpreter that no bound folder holds: recreated
    as links in the sandbox (binding their folders would share whatever else is there, /tmp for one)."""
    links, path = [], sys.executable
    for _ in range(40):  # the kernel's own limit on a chain of links
        if not os.path.islink(path):
            break
        target = os.readlink(path)
        if not _inside(path, (*SYSTEM_DIRS, *dirs)):
            links.append((target, path))
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return links


def probe(work: Path, unsafe: bool, timeout: float = 30) -> Sandbox:
    """Find out how apps can run here: build the sandbox once around a trivial python command and check its uid."""
    why = _try_bwrap(work, timeout)
    if isinstance(why, Sandbox):
        return why
    cause, remedy = why
    if unsafe:
        log.warning("Spaces run UNSANDBOXED (--unsafe-spaces / $%s): %s. Every Space's app can read the data dir "
                    "and the server's environment; use this on a single-user machine only.", UNSAFE_ENV, cause)
        return Sandbox("unsafe", f"unsandboxed by the operator's choice (--unsafe-spaces); no sandbox: {cause}")
    log.error("Spaces are disabled: %s", cause)
    return Sandbox("refused", f"localhub runs every Space in a sandbox, and it cannot build one on this host: {cause}. "
                              f"{remedy}, or, on a single-user machine only, start localhub with --unsafe-spaces (or "
                              f"{UNSAFE_ENV}=1) to run apps unsandboxed")


def _try_bwrap(work: Path, timeout: float) -> Sandbox | tuple[str, str]:
    """The sandbox, or (what is wrong, what to do about it): only a missing bwrap asks for bubblewrap."""
    if os.environ.get(BWRAP_ENV):
        bwrap = os.environ[BWRAP_ENV] if os.access(os.environ[BWRAP_ENV], os.X_OK) else ""
    else:
        bwrap = shutil.which("bwrap") or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else "")
    if not bwrap:
        return (f"bwrap (bubblewrap) is not installed (or ${BWRAP_ENV} names no executable)",
                "Install bubblewrap (Debian: apt-get install bubblewrap)")
    setpriv = ""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv") or ("/usr/bin/setpriv" if os.access("/usr/bin/setpriv", os.X_OK) else "")
        if not setpriv:
            return ("setpriv (util-linux) is not installed: a root server needs it to drop the app to uid 65534",
                    "Install util-linux's setpriv")
    dirs = _python_dirs()
    box = Sandbox("bwrap", "bubblewrap", bwrap, setpriv, dirs, _python_links(dirs))
    data_dir = work.resolve().parent.parent  # work is <data dir>/spaces/.probe
    for shared in (*SYSTEM_DIRS, *box.python_dirs):
        if data_dir.is_relative_to(os.path.realpath(shared)):
            return (f"the data dir {data_dir} is inside {shared}, which every sandbox shares (read-only)",
                    "Move the data dir out of it")
    work.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="probe-", dir=work))
    try:
        app, home = run / "app", run / "home"
        app.mkdir()
        tmp, etc = box.prepare(run, app, home)
        check = ("import os, sys; sys.exit(0 if (os.getuid(), os.getgid(), os.getgroups()) == "
                 f"({SANDBOX_UID}, {SANDBOX_GID}, []) and os.getpid() < 10 and os.getcwd() == {APP!r} else 3)")
        done = _run(box.command([sys.executable, "-I", "-S", "-c", check], app, home, tmp, etc), timeout)
        if isinstance(done, str) or done.returncode != 0:
            return _diagnose(box, done, (app, home, tmp, etc), timeout)
        return box
    finally:
        shutil.rmtree(run, ignore_errors=True)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess | str:
    try:
        return subprocess.run(cmd, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{type(err).__name__}: {err}"


def _diagnose(box: Sandbox, done: subprocess.CompletedProcess | str, dirs: tuple, timeout: float) -> tuple[str, str]:
    """Why the trivial command failed. A path of the server's Python that the sandbox cannot see is named (a shell
    of /usr looks for each one inside the same sandbox); otherwise bwrap's own last words."""
    if isinstance(done, str):
        said = done
    else:
        lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        said = (f"exit {done.returncode}: {lines[-1][:300]}" if lines else
                f"exit {done.returncode}: it did not run as uid {SANDBOX_UID} in its own PID namespace")
    needed = [sys.executable, os.path.realpath(sys.executable), *box.python_dirs]
    look = 'for p in "$@"; do [ -e "$p" ] || echo "$p"; done'
    found = _run(box.command(["/bin/sh", "-c", look, "sh", *needed], *dirs), timeout)
    missing = (found.stdout.decode(errors="replace").split() if not isinstance(found, str) and not found.returncode
               else [])
    if missing:
        return (f"the Python that runs localhub ({sys.executable}) is not visible inside the sandbox: {missing[0]} is "
                f"missing there (bwrap could not run a trivial command: {said})",
                f"Run localhub with a Python whose installation the sandbox can mount read-only at its real path "
                f"(its folders: {', '.join(box.python_dirs) or 'none outside /usr'})")
    return (f"bwrap could not run a trivial command ({said})",
            "Check that this kernel or container allows unprivileged user and PID namespaces "
            "(sysctl kernel.unprivileged_userns_clone, user.max_user_namespaces)")
