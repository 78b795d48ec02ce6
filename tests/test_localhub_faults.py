"""localhub fault injection, observed by the real huggingface_hub client: what it retries, and what it raises.

Run: `.venv/bin/pytest tests/test_localhub_faults.py -q` (~10 s; the client's own backoff sleeps 1 s per retry).
What huggingface_hub 2.4 retries (utils/_http.py, file_download.py): `hf_hub_download` repeats a failed HEAD once with
`http_backoff` (408/429/5xx and connection errors) and its GET retries 408/429 and broken connections; preupload,
the LFS batch and the LFS PUT go through `http_backoff`; `model_info` and the commit POST are not retried.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from localhub import LocalHub
from localhub.faults import admin_token, clear_faults, get_faults, set_faults

httpx2 = pytest.importorskip("httpx2")  # huggingface_hub's HTTP stack: connection errors surface as its types

USERS = {"alice": ("hf_alice_faults_tok", "write")}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> LocalHub:
    h = LocalHub(tmp_path_factory.mktemp("faults") / "hub", users=USERS).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def admin(hub: LocalHub) -> str:
    return admin_token(hub.data_dir)


@pytest.fixture(scope="module")
def api(hub: LocalHub) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token("alice"))


@pytest.fixture(scope="module")
def repo(api: HfApi) -> str:
    repo_id = f"alice/faulty-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b'{"hidden": 8}', path_in_repo="config.json", repo_id=repo_id)
    return repo_id


@pytest.fixture
def faults(hub: LocalHub, admin: str):
    """`faults(rule, ...)` installs rules; every test ends with none."""
    yield lambda *rules: set_faults(hub.url, list(rules), admin=admin)
    clear_faults(hub.url, admin=admin)


def download(hub: LocalHub, repo: str, cache: Path) -> str:
    return Path(hf_hub_download(repo, "config.json", cache_dir=cache, endpoint=hub.url, token=hub.token("alice"))
                ).read_text()


def injected(hub: LocalHub, admin: str) -> list[int]:
    return [r["injected"] for r in get_faults(hub.url, admin=admin)["rules"]]


def test_admin_route_needs_the_admin_token(hub: LocalHub, admin: str):
    url = f"{hub.url}/_localhub/faults"
    rule = [{"class": "api", "kind": "500"}]
    assert httpx.post(url, json=rule).status_code == 403
    assert httpx.post(url, json=rule, headers={"X-Localhub-Admin": "guess"}).status_code == 403
    assert httpx.post(url, json=rule, headers={"authorization": f"Bearer {hub.token('alice')}"}).status_code == 403
    bad = httpx.post(url, json=[{"class": "api", "kind": "418"}], headers={"X-Localhub-Admin": admin})
    assert bad.status_code == 400
    assert get_faults(hub.url, admin=admin)["rules"] == []


def test_429_with_retry_after_is_retried_by_downloads(hub, admin, repo, faults, tmp_path):
    faults({"class": "download", "kind": "429", "retry_after": 0, "next": 2})
    started = time.monotonic()
    assert download(hub, repo, tmp_path) == '{"hidden": 8}'
    assert time.monotonic() - started >= 1.0  # the client waited Retry-After + 1 s before its last try
    assert injected(hub, admin) == [2]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_on_an_unretried_call_raises_with_its_status(hub, admin, api, repo, faults, status):
    faults({"class": "api", "kind": str(status), "next": 1})
    with pytest.raises(HfHubHTTPError) as err:
        api.model_info(repo)
    assert err.value.response.status_code == status
    assert "localhub fault injection" in str(err.value)
    assert api.model_info(repo).id == repo  # `next: 1` is spent
    assert injected(hub, admin) == [1]


def test_5xx_on_the_lfs_put_is_retried_by_the_upload(hub, admin, api, repo, faults):
    faults({"class": "upload", "kind": "503", "method": "PUT", "next": 1})
    commit = api.upload_file(path_or_fileobj=b"\0" * 1024, path_in_repo="weights.bin", repo_id=repo)
    assert commit.oid == api.model_info(repo).sha
    assert injected(hub, admin) == [1]


def test_5xx_on_the_commit_is_not_retried(hub, admin, api, repo, faults):
    head = api.model_info(repo).sha
    faults({"class": "commit", "kind": "500", "next": 1})
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="never.txt", repo_id=repo)
    assert err.value.response.status_code == 500
    assert api.model_info(repo).sha == head
    state = get_faults(hub.url, admin=admin)
    assert state["rules"][0]["injected"] == 1 and state["seen"]["upload"] >= 1  # preupload went through


def test_slow_serves_after_the_delay(hub, admin, repo, faults, tmp_path):
    faults({"class": "download", "kind": "slow", "delay": 1.0, "next": 1})
    started = time.monotonic()
    assert download(hub, repo, tmp_path) == '{"hidden": 8}'
    assert time.monotonic() - started >= 1.0
    assert injected(hub, admin) == [1]


def test_drop_is_a_connection_error_or_a_retry(hub, admin, api, repo, faults, tmp_path):
    faults({"class": "api", "kind": "drop", "next": 1}, {"class": "download", "kind": "drop", "method": "GET",
                                                         "next": 1})
    with pytest.raises(httpx2.RemoteProtocolError, match="disconnected"):
        api.model_info(repo)  # not retried: the caller sees the broken connection
    assert download(hub, repo, tmp_path / "a") == '{"hidden": 8}'  # the GET resumes after a broken connection
    assert injected(hub, admin) == [1, 1]
    # The first HEAD of hf_hub_download only forgives ConnectError and timeouts: a dropped HEAD is raised.
    faults({"class": "download", "kind": "drop", "method": "HEAD", "next": 1})
    with pytest.raises(httpx2.RemoteProtocolError):
        download(hub, repo, tmp_path / "b")
    assert "ASGI callable" not in hub.log_file.read_text()  # dropped cleanly: uvicorn did not try a 500


def test_next_n_stops_after_n(hub, admin, api, repo, faults):
    faults({"class": "api", "kind": "503", "next": 2})
    for _ in range(2):
        with pytest.raises(HfHubHTTPError):
            api.model_info(repo)
    assert api.model_info(repo).id == repo
    assert get_faults(hub.url, admin=admin)["rules"][0] == {
        "class": "api", "kind": "503", "rate": 1.0, "seed": 0, "injected": 2, "next": 2, "remaining": 0}


def test_rate_is_seeded_and_applies_to_its_class_only(hub, admin, api, repo, faults, tmp_path):
    def run() -> list[bool]:
        faults({"class": "api", "kind": "500", "rate": 0.5, "seed": 3})
        outcomes = []
        for _ in range(16):
            try:
                api.model_info(repo)
                outcomes.append(True)
            except HfHubHTTPError as err:
                assert err.response.status_code == 500
                outcomes.append(False)
        return outcomes

    first = run()
    assert 0 < first.count(False) < 16 and injected(hub, admin) == [first.count(False)]
    assert download(hub, repo, tmp_path) == '{"hidden": 8}'  # downloads are another class: untouched
    assert get_faults(hub.url, admin=admin)["seen"]["download"] >= 2
    assert run() == first  # same seed, same faults
