"""Run localhub: `serve()` for the CLI, `LocalHub` for tests and the demo (a subprocess, or a thread).

    hub = LocalHub(tmp / "hub", users={"alice": ("alice-token", "write"), "bob": ("bob-token", "write")},
                   orgs={"team": {"alice": "admin", "bob": "write"}}).start()
    os.environ["HF_ENDPOINT"] = hub.url    # before huggingface_hub is imported
    ...
    hub.stop()

Users' tokens reach a spawned server through a token file (`--token-file`, 0600, in the data dir), never through its
environment or command line: both are readable through /proc. Space apps run sandboxed (localhub/sandbox.py);
`unsafe_spaces=True` runs them unsandboxed where no sandbox can be built (a single-user machine only), and
`allow_private_webhooks=True` lets webhooks target loopback and private addresses (tests with a local receiver).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .http import ROLES, User
from .ports import listen, reserve
from .sandbox import UNSAFE_ENV

log = logging.getLogger("localhub")
TOKENS_ENV = "LOCALHUB_TOKENS"  # "user:token:role,...": still read, but visible in /proc/<pid>/environ (prefer a file)
ORGS_ENV = "LOCALHUB_ORGS"  # "org:user=role,user=role;org2:..." — the --org specs, `;`-separated
PRIVATE_WEBHOOKS_ENV = "LOCALHUB_ALLOW_PRIVATE_WEBHOOKS"
TOKEN_FILE = "tokens"  # LocalHub's token file, in the data dir (0700) and itself 0600


def read_token_file(path: str | Path) -> list[str]:
    """The USER:TOKEN:ROLE lines of a token file (blank lines and `#` comments skipped). The file must be readable by
    its owner only: a token file others can read is refused, as ssh refuses such a key."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"--token-file {path}: {err.strerror or err}") from None
    if mode & 0o077:
        raise ValueError(f"--token-file {path} is readable by other users (mode {mode:o}): chmod 600 {path}")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def write_token_file(path: str | Path, specs: list[str]) -> Path:
    """Write USER:TOKEN:ROLE lines to `path`, created 0600 (never readable by anyone else, not even for a moment)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{spec}\n" for spec in specs))
    os.replace(tmp, path)
    return path


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def parse_tokens(specs: list[str]) -> dict[str, User]:
    """["alice:tok:write", ...] -> {token: User}; rejects malformed specs without echoing the token."""
    users: dict[str, User] = {}
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in ROLES:
            raise ValueError(f"--token wants USER:TOKEN:ROLE with ROLE in {ROLES} (got a spec for user {parts[0]!r})")
        users[parts[1]] = User(parts[0], parts[2])
    return users


def org_specs(orgs: dict[str, dict[str, str]]) -> list[str]:
    """{"team": {"alice": "admin"}} -> ["team:alice=admin"] (what --org and $LOCALHUB_ORGS take)."""
    return [f"{name}:" + ",".join(f"{u}={r}" for u, r in members.items()) for name, members in orgs.items()]


def build_hub(data_dir: str | Path, users: dict[str, User], orgs: dict[str, dict[str, str]] | None = None,
              unsafe_spaces: bool = False, allow_private_webhooks: bool = False):
    from .app import Hub

    hub = Hub(data_dir, users, orgs=orgs, unsafe_spaces=unsafe_spaces, allow_private_webhooks=allow_private_webhooks)
    for ext in _default_extensions(hub):
        hub.add_extension(ext)
    return hub


def _default_extensions(hub) -> list:
    exts = []
    try:
        from .faults import Faults

        exts.append(Faults())
    except ImportError:
        pass
    try:
        from .webhooks import Webhooks

        exts.append(Webhooks(hub))
    except ImportError:
        pass
    try:
        from .spaces import Spaces

        exts.append(Spaces(hub))
    except ImportError:
        pass
    return exts


def server_for(app, **options):
    """uvicorn serving `app` with the guards of localhub/guard.py (deadlines, connection cap); it adopts a socket
    bound beforehand (`server.run(sockets=[sock])`), never binds a port of its own choosing."""
    import uvicorn

    from .guard import ACCEPT_BATCH, GuardedH11Protocol
    from .ports import BACKLOG

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            # asyncio accepts up to `backlog` connections per wake-up before anything else runs, and listen()s with
            # the same number: a small batch keeps a flood of connects from stalling the requests being served
            # (4096 at once held the loop ~1 s), and the kernel's queue goes back to its full length here.
            for sock in sockets or ():
                sock.listen(BACKLOG)

    # log_config=None: uvicorn's records go to the root logger's handlers, and so through the rate limit.
    config = uvicorn.Config(app, http=GuardedH11Protocol, access_log=False, log_level="warning", log_config=None,
                            interface="asgi3", backlog=ACCEPT_BATCH, timeout_keep_alive=5, **options)
    return Server(config)


def serve(host: str, port: int, data_dir: str | Path, users: dict[str, User], seed: list[str] | None = None,
          orgs: dict[str, dict[str, str]] | None = None, unsafe_spaces: bool = False,
          allow_private_webhooks: bool = False, sock: socket.socket | None = None) -> None:
    """Serve until SIGINT/SIGTERM, on `sock` (a listening socket: the CLI's, or one LocalHub handed over) or on
    host:port (0: any free port; the log says which). Access lines carry no query strings and no headers, so no
    token is logged. Seeds and the port are checked before the data dir is touched: ValueError / OSError leave
    nothing behind."""
    from .guard import quiet_logs, raise_open_files
    from .seed import parse_seed

    for spec in seed or []:
        parse_seed(spec)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s localhub %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs full URLs, and a webhook URL may carry credentials
    quiet_logs()
    raise_open_files()
    sock = sock or listen(host, port)
    host, port = sock.getsockname()[:2]
    hub = build_hub(data_dir, users, orgs, unsafe_spaces, allow_private_webhooks)
    hub.base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if seed:
        from .seed import seed_hub

        seed_hub(hub.storage, seed)
    server = server_for(hub.asgi, lifespan="on", timeout_graceful_shutdown=5)
    log.info("serving %s (data in %s, %d users)", hub.base_url, data_dir, len({u.name for u in users.values()}))
    server.run(sockets=[sock])


class LocalHub:
    """A localhub for tests and the demo. `users` maps user -> (token, role); `orgs` maps org -> {user: role} with
    roles read, write or admin (localhub/teams.py); `seed` lists folders to publish at start as public repos,
    `TYPE:NAMESPACE/NAME=FOLDER` (see localhub/seed.py). `unsafe_spaces` (default: $LOCALHUB_UNSAFE_SPACES) runs
    Space apps unsandboxed where no sandbox can be built; `allow_private_webhooks` lets webhooks target loopback and
    private addresses (a test's local receiver).

    The port is bound when the LocalHub is made (`port`, or any free one; or `sock`, a listening socket of the
    caller's), so `url` holds from then on and nobody can take the port before the server runs: the socket is
    handed to the server (its fd to the subprocess), which never binds one itself. The port stays held across
    stop() and start() for as long as the object lives."""

    def __init__(
        self,
        data_dir: str | Path,
        users: dict[str, tuple[str, str]] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        seed: list[str] | None = None,
        log_file: str | Path | None = None,
        orgs: dict[str, dict[str, str]] | None = None,
        unsafe_spaces: bool | None = None,
        allow_private_webhooks: bool = False,
        sock: socket.socket | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.unsafe_spaces = unsafe_spaces
        self.allow_private_webhooks = allow_private_webhooks
        self.users = users or {}
        self.orgs = orgs or {}
        # `_hold` keeps the port ours for this object's life (bound, never listening: a stopped hub refuses
        # connections, and a restart listens on the same port again even if others grab ports meanwhile).
        self._hold = None if sock else reserve(host, port or 0)
        self._sock: socket.socket | None = sock or listen(host, self._hold.getsockname()[1])
        self.host, self.port = host, self._sock.getsockname()[1]
        self.seed = seed
        self.log_file = Path(log_file) if log_file else self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def token(self, user: str) -> str:
        return self.users[user][0]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _token_specs(self) -> list[str]:
        return [f"{u}:{t}:{r}" for u, (t, r) in self.users.items()]

    @property
    def token_file(self) -> Path:
        return self.data_dir / TOKEN_FILE

    def start(self, timeout: float = 60) -> "LocalHub":
        """Start `python -m localhub serve` in its own session and wait until it answers. The users' tokens go
        through a 0600 file in the data dir, not the server's environment or command line."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        write_token_file(self.token_file, self._token_specs())
        sock = self._listening()
        cmd = [sys.executable, "-m", "localhub", "serve", "--host", self.host, "--port", str(self.port),
               "--fd", str(sock.fileno()), "--data", str(self.data_dir), "--token-file", str(self.token_file)]
        for spec in self.seed or []:
            cmd += ["--seed", spec]
        if self.unsafe_spaces:
            cmd.append("--unsafe-spaces")
        if self.allow_private_webhooks:
            cmd.append("--allow-private-webhooks")
        env = {k: v for k, v in os.environ.items() if k != TOKENS_ENV}
        env[ORGS_ENV] = ";".join(org_specs(self.orgs))
        out = open(self.log_file, "ab")
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         pass_fds=(sock.fileno(),))
        finally:
            out.close()
            self._sock = None
            sock.close()  # the server holds it now: a restart after a kill can bind the port again
        self._wait(timeout)
        return self

    def _listening(self) -> socket.socket:
        """The socket to serve on: the one bound at construction, or the same port again after a stop."""
        if self._sock is None:
            self._sock = listen(self.host, self.port)
        return self._sock

    def start_thread(self, timeout: float = 30) -> "LocalHub":
        """Serve from a thread of this process: fastest start, for tests that need no crash isolation."""
        unsafe = env_flag(UNSAFE_ENV) if self.unsafe_spaces is None else self.unsafe_spaces
        hub = build_hub(self.data_dir, parse_tokens(self._token_specs()), self.orgs, unsafe,
                        self.allow_private_webhooks or env_flag(PRIVATE_WEBHOOKS_ENV))
        hub.base_url = self.url
        if self.seed:
            from .seed import seed_hub

            seed_hub(hub.storage, self.seed)
        sock, self._sock = self._listening(), None  # uvicorn closes it when it stops
        self._server = server_for(hub.asgi)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.run, args=([sock],), name="localhub", daemon=True)
        self._thread.start()
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"localhub exited with {self.proc.returncode}; see {self.log_file}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"localhub did not answer on {self.url} within {timeout}s; see {self.log_file}")

    def stop(self, timeout: float = 10) -> None:
        """Stop cleanly: SIGTERM to our own process (by pid), SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._server is not None:
            self._server.should_exit = True
            if self._thread:
                self._thread.join(timeout)
            self._server = None
        if self._sock is not None:  # made, never started: give the port back
            self._sock.close()
            self._sock = None

    def kill(self) -> None:
        """`kill -9` the server process: for crash-safety tests."""
        assert self.proc is not None, "kill() needs a subprocess hub (start())"
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
