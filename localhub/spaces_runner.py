"""The Space supervisor: one thread that starts, probes and stops every Space's app as a local process on loopback.

`Spaces` (localhub/spaces.py: routes, settings, what the Hub reports) inherits `Supervisor` and talks to it through
`_request(repo, action, stage)`: the request only records the stage the caller should see and queues the work; this
thread does it, and records every later stage with `_set` (dropped when a newer request superseded it: `gen`).

Process model. One supervisor thread owns every app process (it spawns them, so PR_SET_PDEATHSIG set in the child
ties them to it: a hub killed with -9 takes its apps along). On a commit to `main`: stop the old process (SIGTERM to
its process group, SIGKILL after 5 s), copy the commit's files into a fresh
`data_dir/spaces/{ns}/{name}/runs/<run>/app`, read README front matter (`sdk`, `app_file`), then `python app.py` there
(gradio, and docker Spaces that carry a python app_file; static Spaces get `python -m http.server`), inside the
sandbox of localhub/sandbox.py (bubblewrap: its checkout at /home/user/app, its home /home/user, uid 65534, its own
PID namespace; refused, as BUILD_ERROR, where no sandbox can be built unless the operator chose --unsafe-spaces),
with an environment built from scratch: the Space's variables and secrets, HF_TOKEN (a read-only token localhub mints
for this run, scoped to the Space's namespace, revoked when the run ends; unless the owner set an HF_TOKEN secret),
HF_ENDPOINT (the hub), PORT/GRADIO_SERVER_PORT (a free port), GRADIO_SERVER_NAME=127.0.0.1,
SPACE_ID/SPACE_AUTHOR_NAME/SPACE_REPO_NAME/SPACE_HOST, SYSTEM=spaces, HOME, HF_HOME (in the Space's home, kept
across its restarts), TMPDIR, PATH, LANG, and nothing of the server's. requirements.txt is NOT installed (offline):
the app runs with the server's Python. APP_STARTING until the app answers HTTP on its port ->
RUNNING; exiting, or not answering within the start timeout ($LOCALHUB_SPACE_START_TIMEOUT, default 120 s: importing
gradio on 2 busy cores is slow) -> RUNTIME_ERROR with the exit code and the last log lines in `errorMessage`. A
restart with the server resumes every unpaused Space.
Each run's output is captured line by line into a `LogBuffer` (build and run logs), which the logs route streams.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .http import iso
from .ports import reserve
from .sandbox import HOME, Sandbox, probe
from .storage import FileEntry, Repo

log = logging.getLogger("localhub")
ALIVE = ("APP_STARTING", "RUNNING")
START_TIMEOUT_ENV = "LOCALHUB_SPACE_START_TIMEOUT"
TOKEN_KEY = "HF_TOKEN"
MAX_LOG_LINES = 10_000

# Runs first in the child: die with the supervisor thread (Linux), then become the app (exec keeps the pid).
_BOOTSTRAP = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("localhub exited before the app started")
os.execv(sys.argv[2], sys.argv[2:])
"""


class LogBuffer:
    """A run's log lines with their arrival times: in memory for the SSE route, and appended to a file."""

    def __init__(self, path: Path):
        self.lines: list[tuple[float, str]] = []
        self.base = 0  # index of lines[0] once old lines were trimmed
        self.done = False
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        with self.lock:
            if self.done:
                return
            self.lines.append((time.time(), text))
            if len(self.lines) > MAX_LOG_LINES:
                drop = len(self.lines) - MAX_LOG_LINES
                del self.lines[:drop]
                self.base += drop
            self.file.write(text)
            self.file.flush()

    def read(self, start: int) -> tuple[list[tuple[float, str]], int, bool]:
        """Lines from index `start` on, the next index, and whether no more lines will come."""
        with self.lock:
            lines = self.lines[max(0, start - self.base):]
            return lines, self.base + len(self.lines), self.done

    def tail(self, n: int) -> str:
        with self.lock:
            return "".join(t for _, t in self.lines[-n:]).strip()

    def finish(self) -> None:
        with self.lock:
            if not self.done:
                self.done = True
                self.file.close()


@dataclass
class SpaceState:
    """What the supervisor knows about one Space; `gen` grows with every request, so stale work is dropped."""

    gen: int = 0
    stage: str = "BUILDING"
    error: str | None = None
    port: int | None = None
    proc: subprocess.Popen | None = None
    deadline: float = 0.0
    build_log: LogBuffer | None = None
    run_log: LogBuffer | None = None
    reader: threading.Thread | None = None
    token: str | None = None  # the run's minted read token (revoked when the run ends)
    hold: socket.socket | None = None  # keeps the app's port from anyone else until the app listens on it
    port_tries: int = 0  # starts again on a new port after an app said its port was in use


class Supervisor:
    """The supervisor half of the Spaces extension: per-Space state, the work queue and the thread that drains it.

    `__init__` creates the thread; the subclass starts it (`self.thread.start()`) once it is fully built.
    """

    def __init__(self, hub, start_timeout: float | None = None, resume: bool = True):
        self.hub, self.storage = hub, hub.storage
        self.root = Path(hub.data_dir) / "spaces"
        self.start_timeout = float(start_timeout or os.environ.get(START_TIMEOUT_ENV) or 120)
        self.resume = resume
        self.states: dict[str, SpaceState] = {}
        self.lock = threading.RLock()
        self.commands: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._supervise, name="localhub-spaces", daemon=True)
        self.unsafe = bool(getattr(hub, "unsafe_spaces", False))
        self._sandbox: Sandbox | None = None  # probed at the first deploy, off the server's start-up path

    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = probe(self.root / ".probe", self.unsafe)
            log.info("spaces: %s", self._sandbox.mode if self._sandbox.isolated else self._sandbox.reason)
        return self._sandbox

    def _request(self, repo: Repo, action: str, stage: str) -> None:
        """Record the stage the caller should see now, and queue the work for the supervisor."""
        with self.lock:
            st = self.states.setdefault(repo.id, SpaceState())
            st.gen += 1
            st.stage, st.error, st.port_tries = stage, None, 0
            self.commands.put((action, repo.id, st.gen, stage))

    # ---- the supervisor thread ------------------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self.hub.base_url and not self.closed.wait(0.05):
            pass  # the server sets base_url once it knows its port; apps need it as HF_ENDPOINT
        if self.resume:
            for repo in self.storage.list_repos("space"):
                with self.lock:
                    fresh = repo.id not in self.states
                if fresh and not repo.space.get("paused"):
                    self._request(repo, "deploy", "BUILDING")
        while not self.closed.is_set():
            try:
                command = self.commands.get(timeout=0.2)
            except queue.Empty:
                command = None
            try:
                if command:
                    self._handle(*command)
                self._poll()
            except Exception:  # a bug here must not stop supervising the other Spaces
                log.exception("space supervisor error (command %s)", command)

    def _current(self, sid: str, gen: int) -> SpaceState | None:
        with self.lock:
            st = self.states.get(sid)
            return st if st is not None and st.gen == gen else None

    def _set(self, sid: str, gen: int, stage: str, error: str | None = None) -> bool:
        with self.lock:
            st = self._current(sid, gen)
            if st is not None:
                st.stage, st.error = stage, error
                if stage not in ALIVE:
                    st.port = None
            if st is not None and st.build_log and stage not in ("BUILDING", "APP_STARTING"):
                st.build_log.finish()
            return st is not None

    def _handle(self, action: str, sid: str, gen: int, stage: str) -> None:
        st = self._current(sid, gen)
        if st is None:
            return  # superseded by a later request (on the same state, which then stops what runs)
        self._stop(st)
        if action == "stop":
            self._set(sid, gen, stage)
        elif action == "remove":
            with self.lock:
                if self._current(sid, gen):
                    del self.states[sid]
            shutil.rmtree(self.root / sid, ignore_errors=True)
        else:
            try:
                self._deploy(sid, st, gen)
            except Exception as err:
                log.exception("space %s: build failed", sid)
                self._set(sid, gen, "BUILD_ERROR", f"localhub could not build the Space: {err}")

    def _deploy(self, sid: str, st: SpaceState, gen: int) -> None:
        repo = self.storage.get_repo("space", sid)
        if repo is None:
            return
        oid, _ = self.storage.resolve(repo, "main")
        files = self.storage.tree(oid)
        space_dir = self.root / repo.namespace / repo.name
        home = space_dir / "home"
        run_dir = space_dir / "runs" / f"{time.time_ns()}-{oid[:8]}"
        if (space_dir / "runs").is_dir():
            for old in (space_dir / "runs").iterdir():
                shutil.rmtree(old, ignore_errors=True)
        app_dir = run_dir / "app"
        app_dir.mkdir(parents=True)
        build = LogBuffer(run_dir / "build.log")
        with self.lock:
            if self._current(sid, gen) is None:
                build.finish()
                return
            if st.build_log:
                st.build_log.finish()
            st.build_log, st.run_log = build, None
        build.write(f"===== Build queued at {iso(time.time())} / Commit SHA: {oid} =====\n")
        config, error = self._card(files)
        if error:
            build.write(error + "\n")
            self._set(sid, gen, "CONFIG_ERROR", error)
            return
        self._materialise(files, app_dir, build)
        sdk = config.get("sdk") or repo.sdk or "gradio"
        stage, message, argv = self._command(sdk, config, app_dir)
        if stage:
            build.write(message + "\n")
            self._set(sid, gen, stage, message)
            return
        if (app_dir / "requirements.txt").is_file():
            build.write(f"requirements.txt: not installed (localhub is offline); the app runs with {sys.executable}\n")
        box = self.sandbox()
        if box.mode == "refused":
            build.write(box.reason + "\n")
            self._set(sid, gen, "BUILD_ERROR", box.reason)
            return
        tmp, etc = box.prepare(run_dir, app_dir, home)
        build.write(("Sandbox: bubblewrap, uid 65534, own PID namespace; app in /home/user/app\n" if box.isolated
                     else f"WARNING: {box.reason}\n"))
        hold = reserve()  # held until the app answers: no other process's bind or connect can be given the port
        port = hold.getsockname()[1]
        if st.port_tries:  # the app could not bind a held port (it binds without SO_REUSEADDR): only chosen, now
            hold.close()
            build.write(f"The app's port was in use: starting it again on port {port}\n")
        argv = [a.replace("{port}", str(port)) for a in argv]
        token = self._token_for(repo, build)
        env = self._env(repo, port, box, home, tmp, token)
        run = LogBuffer(run_dir / "run.log")
        run.write(f"===== Application Startup at {iso(time.time())} =====\n")
        command = box.command([sys.executable, *argv], app_dir, home, tmp, etc)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, str(os.getpid()), *command], cwd=app_dir, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except BaseException:
            self._revoke(token)
            hold.close()
            raise
        reader = threading.Thread(target=_pump, args=(proc, run), name=f"space-log-{sid}", daemon=True)
        reader.start()
        build.write(f"Starting {' '.join(argv)} on 127.0.0.1:{port} (pid {proc.pid})\n")
        with self.lock:
            current = self._current(sid, gen) is not None
            if current:
                st.proc, st.reader, st.run_log, st.port, st.token, st.hold = proc, reader, run, port, token, hold
                st.stage, st.deadline = "APP_STARTING", time.monotonic() + self.start_timeout
        if not current:
            _terminate(proc)
            self._revoke(token)
            hold.close()
        log.info("space %s: started pid %d on port %d (commit %s)", sid, proc.pid, port, oid[:8])

    def _card(self, files: dict[str, FileEntry]) -> tuple[dict, str | None]:
        readme = files.get("README.md")
        if readme is None:
            return {}, None
        text = self.storage.blob_path(readme.sha256).read_text(errors="replace")
        if not text.startswith("---"):
            return {}, None
        try:
            data = yaml.safe_load(text.split("---", 2)[1])
        except yaml.YAMLError as err:
            return {}, f"Invalid YAML in README.md front matter: {err}"
        if data is not None and not isinstance(data, dict):
            return {}, "README.md front matter must be a YAML mapping"
        return data or {}, None

    def _materialise(self, files: dict[str, FileEntry], app_dir: Path, build: LogBuffer) -> None:
        root, total = app_dir.resolve(), 0
        for path, entry in sorted(files.items()):
            dest = (app_dir / path).resolve()
            if not dest.is_relative_to(root) or dest == root:
                build.write(f"skipped {path!r}: outside the app folder\n")
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.storage.blob_path(entry.sha256), dest)  # a copy: the app may write to its files
            total += entry.size
        build.write(f"{len(files)} files ({total} bytes) checked out\n")

    @staticmethod
    def _command(sdk: str, config: dict, app_dir: Path) -> tuple[str | None, str, list[str]]:
        """(error stage or None, message, argv after the python executable; "{port}" is filled in)."""
        default = {"static": "index.html"}.get(sdk, "app.py")
        app_file = str(config.get("app_file") or default)
        path = (app_dir / app_file).resolve()
        if not path.is_relative_to(app_dir.resolve()):
            return "CONFIG_ERROR", f"app_file {app_file!r} is outside the repository", []
        if sdk not in ("gradio", "static", "docker", "streamlit"):
            return "CONFIG_ERROR", f"Unknown sdk {sdk!r}: localhub runs gradio, static, streamlit and python apps", []
        if not path.is_file():
            if sdk == "docker" and (app_dir / "Dockerfile").is_file():
                return "BUILD_ERROR", (f"localhub runs Docker Spaces without Docker: it needs a python app_file "
                                       f"({app_file}) that serves $PORT"), []
            return "NO_APP_FILE", f"No application file: {app_file}", []
        if sdk == "static":
            return None, "", ["-m", "http.server", "{port}", "--bind", "127.0.0.1"]
        if sdk == "streamlit":
            if importlib.util.find_spec("streamlit") is None:
                return "BUILD_ERROR", "streamlit is not installed in localhub's Python", []
            return None, "", ["-m", "streamlit", "run", app_file, "--server.port", "{port}",
                              "--server.address", "127.0.0.1", "--server.headless", "true"]
        if not app_file.endswith(".py"):
            return "BUILD_ERROR", f"app_file {app_file!r} is not a python file", []
        return None, "", [app_file]

    def _token_for(self, repo: Repo, build: LogBuffer) -> str | None:
        """Mint the run's read-only token, unless the owner set an HF_TOKEN secret (then say if that can write)."""
        own = repo.space.get("secrets", {}).get(TOKEN_KEY)
        if own is None:
            token = self.hub.mint_space_token(repo)
            build.write(f"HF_TOKEN: a read-only token minted by localhub for this run (reads {repo.namespace}'s "
                        "repos and public ones)\n")
            return token
        user = self.hub.tokens.get(str(own.get("value", "")))
        if user is not None and user.role == "write":
            build.write(f"WARNING: the HF_TOKEN secret is a write token (of {user.name}). The app needs read access "
                        "only: delete the secret and localhub gives each run a read-only token\n")
            log.warning("space %s: its HF_TOKEN secret is a write token", repo.id)
        return None

    def _revoke(self, token: str | None) -> None:
        if token:
            self.hub.space_tokens.pop(token, None)

    def _env(self, repo: Repo, port: int, box: Sandbox, home: Path, tmp: Path, token: str | None) -> dict[str, str]:
        """The app's whole environment, from scratch: nothing of the server's (its tokens, key paths, HF_TOKEN)."""
        home_path = HOME if box.isolated else str(home)
        env: dict[str, str] = {}
        for kind in ("variables", "secrets"):
            env.update({k: str(v.get("value", "")) for k, v in repo.space.get(kind, {}).items()})
        if token:
            env[TOKEN_KEY] = token
        env.update(
            PATH=f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin", HOME=home_path,
            TMPDIR="/tmp" if box.isolated else str(tmp), LANG="C.UTF-8", USER="user", LOGNAME="user",
            HF_ENDPOINT=self.hub.base_url, HF_HOME=f"{home_path}/.cache/huggingface", HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1", SPACE_ID=repo.id, SPACE_AUTHOR_NAME=repo.namespace, SPACE_REPO_NAME=repo.name,
            SPACE_HOST=f"127.0.0.1:{port}", SYSTEM="spaces", PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
        )
        return env

    def _poll(self) -> None:
        with self.lock:
            live = [(sid, st.gen, st) for sid, st in self.states.items() if st.proc is not None and st.stage in ALIVE]
        for sid, gen, st in live:
            rc = st.proc.poll()  # type: ignore[union-attr]
            if rc is not None:
                if st.reader:
                    st.reader.join(2)  # the last lines are the reason
                tail = st.run_log.tail(20) if st.run_log else ""
                st.proc = None
                self._revoke(st.token)
                st.token = None
                _release(st)
                if st.stage == "APP_STARTING" and _port_taken(tail) and st.port_tries < PORT_TRIES:
                    st.port_tries += 1  # an app that binds without SO_REUSEADDR, or a port taken anyway
                    log.warning("space %s: port %s was in use; starting again on another", sid, st.port)
                    self.commands.put(("deploy", sid, gen, "BUILDING"))
                    continue
                self._set(sid, gen, "RUNTIME_ERROR", f"Exit code: {rc}. Reason: {tail}")
                log.info("space %s: app exited with %s", sid, rc)
            elif st.stage == "APP_STARTING" and _answers(st.port):
                _release(st)
                self._set(sid, gen, "RUNNING")
                log.info("space %s: running on port %s", sid, st.port)
            elif st.stage == "APP_STARTING" and time.monotonic() > st.deadline:
                self._stop(st)
                tail = st.run_log.tail(20) if st.run_log else ""
                self._set(sid, gen, "RUNTIME_ERROR", f"Launch timed out: the app did not answer HTTP within "
                                                     f"{self.start_timeout:g} s. Last logs: {tail}")

    def _stop(self, st: SpaceState) -> None:
        _release(st)
        proc, st.proc = st.proc, None
        token, st.token = st.token, None
        if proc is not None:
            _terminate(proc)
        self._revoke(token)
        if st.reader:
            st.reader.join(2)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(15)
        with self.lock:
            states = list(self.states.values())
        for st in states:  # signal every app first, then wait: shutdown takes one grace period, not one per app
            if st.proc is not None and st.proc.poll() is None:
                _signal_group(st.proc, signal.SIGTERM)
        for st in states:
            self._stop(st)


# ---- process helpers -----------------------------------------------------------------------------------------
PORT_TRIES = 3
_PORT_TAKEN = ("address already in use", "errno 98", "eaddrinuse", "cannot find empty port")


def _port_taken(log_tail: str) -> bool:
    """Did the app fail because its port was taken? (Python's, uvicorn's and gradio's words for it)"""
    text = log_tail.lower()
    return any(words in text for words in _PORT_TAKEN)


def _release(st: SpaceState) -> None:
    hold, st.hold = st.hold, None
    if hold is not None:
        hold.close()


def _pump(proc: subprocess.Popen, buf: LogBuffer) -> None:
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        buf.write(raw.decode("utf-8", errors="replace"))
    proc.stdout.close()
    buf.finish()


def _answers(port: int | None, timeout: float = 5.0) -> bool:
    """Does something speak HTTP on the port? (a raw probe: an HTTP client would log every attempt)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            head, received = sock.recv(5), 0
            while (chunk := sock.recv(1 << 16)) and received < (1 << 22):  # read it all: an early close makes
                received += len(chunk)                                     # the app log a connection reset
            return head == b"HTTP/"
    except OSError:
        return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the app's own session: its children go too
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
