"""Shared fixtures: one localhub per test session, reached by the real HF clients through HF_ENDPOINT.

The HF clients read their environment once, at import (`huggingface_hub.constants.ENDPOINT`,
`datasets.config.HF_ENDPOINT`), so this module sets it at the top, before any test module imports them: reserve a
port, point HF_ENDPOINT at it, isolate HF_HOME in a session temp dir. The server itself starts lazily, with the
first test that asks for the `localhub` fixture.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from localhub import LocalHub, free_port

SESSION_TMP = Path(tempfile.mkdtemp(prefix="hubflow-tests-"))
HUB_PORT = free_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"

os.environ.update(
    HF_ENDPOINT=HUB_URL,
    HF_HUB_DISABLE_XET="1",  # hf-xet would take over every LFS upload; localhub speaks plain LFS
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HOME=str(SESSION_TMP / "hf_home"),
    HF_HUB_ETAG_TIMEOUT="30",  # 2 shared cores: the default 10 s can trip under load
    TOKENIZERS_PARALLELISM="false",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    DO_NOT_TRACK="1",
)
# Tests pass tokens explicitly; an ambient token or offline switch from the developer's shell must not leak in.
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE",
             "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN_PATH"):
    os.environ.pop(_var, None)

# Random per session, so the "tokens never reach the log" check cannot pass by accident.
HUB_USERS = {
    "alice": (f"hf_alice_{secrets.token_hex(12)}", "write"),
    "bob": (f"hf_bob_{secrets.token_hex(12)}", "write"),
    "reader": (f"hf_reader_{secrets.token_hex(12)}", "read"),
    # Owns hubflow/support-tickets, the dataset deployments/prefect.yaml's retrain trigger watches.
    "hubflow": (f"hf_hubflow_{secrets.token_hex(12)}", "write"),
}


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    """The session's temp dir (HF_HOME and the hub's data live under it)."""
    return SESSION_TMP


@pytest.fixture(scope="session")
def localhub() -> LocalHub:
    """A localhub subprocess on HF_ENDPOINT's port with users alice, bob (write) and reader (read).

    `localhub.token("alice")` gives a token; `localhub.log_file` is the server's log.
    """
    # The webhook tests register receivers on loopback, which localhub refuses unless the operator allows it.
    hub = LocalHub(SESSION_TMP / "hub", users=HUB_USERS, port=HUB_PORT, allow_private_webhooks=True).start()
    yield hub
    hub.stop()


@pytest.fixture
def hf_api(localhub: LocalHub):
    """An HfApi authenticated as alice."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=localhub.url, token=localhub.token("alice"))


@pytest.fixture
def new_repo_id(request: pytest.FixtureRequest):
    """`new_repo_id()` -> "alice/<test name>-<random>"; `new_repo_id("bob")` for another namespace."""

    def make(user: str = "alice") -> str:
        # "--" is no valid id
        stem = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:40].strip("-")
        return f"{user}/{stem}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(autouse=True)
def _fresh_hf_filesystem():
    """HfFileSystem instances and their listings are cached across calls (protocol doc, trap 7)."""
    yield
    import sys

    if "huggingface_hub" in sys.modules:
        from huggingface_hub import HfFileSystem

        HfFileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a module of tiny-model tests: the test machine's cores are shared, and two
    threads fighting over them make tiny ops ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def datasets_lib():
    """`datasets`, with the parquet-export lookup off: at `main` it would resolve datasets-server.<host> via DNS."""
    import datasets

    datasets.config.USE_PARQUET_EXPORT = False
    return datasets


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's test server on a fresh SQLite database, one per session (~20 s to start on 2 cores, so the
    harness's default 30 s start-up timeout is raised)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API on loopback (moto's server), reached by s3fs exactly as a cluster's store would be."""
    import s3fs
    from moto.server import ThreadedMotoServer

    from localhub import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in dict(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}",
    ).items():
        monkeypatch.setenv(key, value)
    # moto keeps its buckets in this process's memory, shared by every server it starts: each test starts empty.
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")).close()
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches listings per instance: none from an earlier test
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"}).mkdir("hubflow")
    yield "s3://hubflow"
    server.stop()
