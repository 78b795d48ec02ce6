"""The real multi-worker topology on loopback, as the README describes it for real machines:

    prefect server start (SQLite)   ← API, UI, automations
    ├── cpu pool: 1 process worker  → hubflow-pipeline (pin, pull, preprocess, evaluate, publish)
    └── gpu pool: 2 process workers → hubflow-train, hubflow-predict (dispatched with run_deployment)
    moto S3 server                  ← the only shared storage: artifact store + Prefect results
    localhub                        ← the Hub; its webhook → hubflow webhooks serve → Prefect event → retrain

Each worker has its own working directory and HF_HOME. Deployed from deployments/prefect.yaml, unmodified.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from localhub import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUCKET = "hubflow"


class Procs:
    """Processes this test starts, each in its own session; stopped by pid (group), never by name."""

    def __init__(self, logs: Path):
        self.logs, self.procs = logs, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], env: dict, cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, env=env, cwd=cwd or ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop(self, name: str | None = None) -> None:
        for n, proc in list(self.procs):
            if name is not None and n != name:
                continue
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.procs.remove((n, proc))

    def tail(self, name: str, n: int = 60) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up waiting for {what} after {timeout}s")


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def topology(localhub, tmp_path_factory):
    """Start moto, a Prefect server, the pools, the deployments and three workers. Yields the env and handles."""
    tmp = tmp_path_factory.mktemp("topology")
    procs = Procs(tmp / "logs")
    s3_port, api_port, hook_port = free_port(), free_port(), free_port()
    s3_url, api_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{api_port}/api"
    secret = uuid.uuid4().hex
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK="remote-file-system/hubflow-results",
        PREFECT_LOGGING_EXTRA_LOGGERS="hubflow",
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=s3_url,
        HF_TOKEN=localhub.token("alice"),
        HUBFLOW_STORE=f"s3://{BUCKET}/store",
        HUBFLOW_WEBHOOK_SECRET=secret,
    )
    try:
        procs.start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], base)
        server_env = {**base, "PREFECT_HOME": str(tmp / "server-home")}
        procs.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                       "--port", str(api_port)], server_env)
        wait_for(lambda: _up(f"{s3_url}/"), 60, "moto")
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_url}, key="testing", secret="testing").mkdir(BUCKET)
        wait_for(lambda: _up(f"{api_url}/health"), 180, "prefect server", interval=1)
        setup = f"""
from prefect.filesystems import RemoteFileSystem
RemoteFileSystem(basepath="s3://{BUCKET}/prefect-results", settings={{"key": "testing", "secret": "testing",
    "client_kwargs": {{"endpoint_url": "{s3_url}"}}}}).save("hubflow-results", overwrite=True)
"""
        subprocess.run([sys.executable, "-c", setup], env=base, check=True, cwd=ROOT)
        subprocess.run([str(BIN / "hubflow"), "pools", "up"], env=base, check=True, cwd=ROOT)
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file",
                                 "deployments/prefect.yaml", "--all"], env=base, cwd=ROOT, capture_output=True,
                                text=True)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        for name, pool in (("cpu-1", "cpu"), ("gpu-1", "gpu"), ("gpu-2", "gpu")):
            home = tmp / name
            home.mkdir()
            env = {**base, "HF_HOME": str(home / "hf_home"), "HUBFLOW_MODEL_CACHE": str(home / "models")}
            procs.start(name, [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name,
                               "--type", "process"], env, cwd=home)
        yield {"env": base, "procs": procs, "api_url": api_url, "s3_url": s3_url, "secret": secret,
               "hook_port": hook_port, "tmp": tmp}
    finally:
        procs.stop()


def _client(topology):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(topology["api_url"])


def _s3(topology):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": topology["s3_url"]}, key="testing", secret="testing")
