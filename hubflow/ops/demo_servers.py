"""The demo's two servers' plumbing: Prefect's server started first (so its start-up overlaps ours), and localhub
on the port it had last time (so a rerun publishes byte-identical files). Used by `hubflow demo` (both kinds)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def send_pending_run_records() -> None:
    """The flow's last logs and events go to the server in batches: send them while it still runs (Prefect does
    this at exit, but our server stops before that)."""
    import sys

    if "prefect.logging.handlers" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
        EventsWorker.drain_all(timeout=5)


def same_port_as_last_time(workdir: Path) -> socket.socket:
    """A listening socket for this work dir's localhub: on the port it had last time when that is free, else on a
    new one (kept in DIR/hub.port). The repos' URLs are in the files hubflow publishes (the Space's README links the
    model), so a rerun on another port would find the Space changed and redeploy it. Bound now and handed to
    localhub as it is (`LocalHub(sock=...)`): a port only chosen here could be taken during the seconds of seeding
    before the server starts."""
    from localhub.ports import listen

    record = workdir / "hub.port"
    try:
        port = int(record.read_text())
    except (OSError, ValueError):
        port = 0
    sock = listen("127.0.0.1", port, fallback=True)
    record.write_text(f"{sock.getsockname()[1]}\n")
    return sock


def serve_prefect(fd: int) -> None:
    """Prefect's API on an inherited listening socket (`python -c` of PrefectServer): what `uvicorn --factory
    prefect.server.api.server:create_app --lifespan on` does, but on a socket bound by the parent, never a port
    chosen and bound later (uvicorn's own --fd takes a Unix socket)."""
    import uvicorn

    sock = socket.socket(fileno=fd)
    config = uvicorn.Config("prefect.server.api.server:create_app", factory=True, log_level="error", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


class PrefectServer:
    """Prefect's server for one demo run, under $PREFECT_HOME: what Prefect's embedded mode starts (the same command
    and settings), but started by us, first thing. Its start-up (a subprocess that imports the server and opens the
    database, seconds) then overlaps localhub's and this process's imports, and with PREFECT_API_URL pointing at it
    this process never imports the server itself, as an embedded-mode flow does (~4 s of imports on 2 cores)."""

    def __init__(self) -> None:
        import subprocess
        import sys

        from localhub.ports import listen

        sock = listen("127.0.0.1")  # bound here, served there: the port cannot be taken in between
        self.port = sock.getsockname()[1]
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        code = f"from hubflow.ops.demo_servers import serve_prefect; serve_prefect({sock.fileno()})"
        with sock:
            self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                                         pass_fds=(sock.fileno(),))

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self) -> None:
        """Until the server answers (a fresh database migrates first: up to the start-up timeout)."""
        import httpx

        deadline = time.monotonic() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Prefect's server exited with status {self.proc.returncode} before answering")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"Prefect's server did not answer on {self.api_url} within the start-up timeout "
                           "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def stop(self, timeout: float = 10) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
