"""Run localhub: `serve()` for the CLI, `LocalHub` for tests and the demo (a subprocess, or a thread).

    hub = LocalHub(tmp / "hub", users={"alice": ("alice-token", "write"), "bob": ("bob-token", "write")},
                   orgs={"team": {"alice": "admin", "bob": "write"}}).start()
    os.environ["HF_ENDPOINT"] = hub.url    # before huggingface_hub is imported
    ...
    hub.stop()
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .http import ROLES, User
from .ports import free_port

log = logging.getLogger("localhub")
TOKENS_ENV = "LOCALHUB_TOKENS"  # "user:token:role,..." — keeps tokens out of `ps` for spawned servers
ORGS_ENV = "LOCALHUB_ORGS"  # "org:user=role,user=role;org2:..." — the --org specs, `;`-separated


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


def build_hub(data_dir: str | Path, users: dict[str, User], orgs: dict[str, dict[str, str]] | None = None):
    from .app import Hub

    hub = Hub(data_dir, users, orgs=orgs)
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


def serve(host: str, port: int, data_dir: str | Path, users: dict[str, User], seed: list[str] | None = None,
          orgs: dict[str, dict[str, str]] | None = None) -> None:
    """Serve until SIGINT/SIGTERM. Access lines carry no query strings and no headers, so no token is logged."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s localhub %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs full URLs, and a webhook URL may carry credentials
    hub = build_hub(data_dir, users, orgs)
    hub.base_url = f"http://{host}:{port}"
    if seed:
        from .seed import seed_hub

        seed_hub(hub.storage, seed)
    config = uvicorn.Config(hub.asgi, host=host, port=port, access_log=False, log_level="warning", lifespan="on",
                            interface="asgi3", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    log.info("serving %s (data in %s, %d users)", hub.base_url, data_dir, len({u.name for u in users.values()}))
    server.run()


class LocalHub:
    """A localhub for tests and the demo. `users` maps user -> (token, role); `orgs` maps org -> {user: role} with
    roles read, write or admin (localhub/teams.py); `seed` lists folders to publish at start as public repos,
    `TYPE:NAMESPACE/NAME=FOLDER` (see localhub/seed.py)."""

    def __init__(
        self,
        data_dir: str | Path,
        users: dict[str, tuple[str, str]] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        seed: list[str] | None = None,
        log_file: str | Path | None = None,
        orgs: dict[str, dict[str, str]] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.users = users or {}
        self.orgs = orgs or {}
        self.host, self.port = host, port or free_port(host)
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

    def start(self, timeout: float = 60) -> "LocalHub":
        """Start `python -m localhub serve` in its own session and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "localhub", "serve", "--host", self.host, "--port", str(self.port),
               "--data", str(self.data_dir)]
        for spec in self.seed or []:
            cmd += ["--seed", spec]
        env = {**os.environ, TOKENS_ENV: ",".join(self._token_specs()), ORGS_ENV: ";".join(org_specs(self.orgs))}
        out = open(self.log_file, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self._wait(timeout)
        return self

    def start_thread(self, timeout: float = 30) -> "LocalHub":
        """Serve from a thread of this process: fastest start, for tests that need no crash isolation."""
        import uvicorn

        hub = build_hub(self.data_dir, parse_tokens(self._token_specs()), self.orgs)
        hub.base_url = self.url
        if self.seed:
            from .seed import seed_hub

            seed_hub(hub.storage, self.seed)
        config = uvicorn.Config(hub.asgi, host=self.host, port=self.port, access_log=False, log_level="warning",
                                interface="asgi3")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._server.run, name="localhub", daemon=True)
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

    def kill(self) -> None:
        """`kill -9` the server process: for crash-safety tests."""
        assert self.proc is not None, "kill() needs a subprocess hub (start())"
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
