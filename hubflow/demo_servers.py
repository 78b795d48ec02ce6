"""The demo's two servers' plumbing: Prefect's server started first (so its start-up overlaps ours), and localhub
on the port it had last time (so a rerun publishes byte-identical files). Used by `hubflow demo` (both kinds)."""

from __future__ import annotations

import os
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


def same_port_as_last_time(workdir: Path) -> int:
    """The port this work dir's localhub had last time, when it is free, else a new one (kept in DIR/hub.port).
    The repos' URLs are in the files hubflow publishes (the Space's README links the model), so a rerun on another
    port would find the Space changed and redeploy it."""
    import socket

    from localhub import free_port

    record = workdir / "hub.port"
    try:
        port = int(record.read_text())
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            s.bind(("127.0.0.1", port))
    except (OSError, ValueError):
        port = free_port()
    record.write_text(f"{port}\n")
    return port


class PrefectServer:
    """Prefect's server for one demo run, under $PREFECT_HOME: what Prefect's embedded mode starts (the same command
    and settings), but started by us, first thing. Its start-up (a subprocess that imports the server and opens the
    database, seconds) then overlaps localhub's and this process's imports, and with PREFECT_API_URL pointing at it
    this process never imports the server itself, as an embedded-mode flow does (~4 s of imports on 2 cores)."""

    def __init__(self) -> None:
        import subprocess
        import sys

        from localhub import free_port

        self.port = free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host",
             "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, start_new_session=True)

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
