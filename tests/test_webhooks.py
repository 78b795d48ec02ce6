"""Hub updates → one Prefect run per revision: the webhook receiver, its registration, the dedup, the sensor.

Run: `.venv/bin/pytest tests/test_webhooks.py -q`. Real servers only: localhub delivers the webhooks, the receiver is
`hubflow webhooks serve` in a subprocess pointed at Prefect's test server, and a deployment with the trigger of
deployments/prefect.yaml (`hub.dataset.*` / `hub.dataset.updated` / `revision: {{ event.payload.revision }}`) turns
events into flow runs. No worker: the automation creates the run in Scheduled state, and that run is what we count.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prefect import flow

from hubflow.events import SeenRevisions, emit_hub_update, hub_event_id
from localhub import free_port

pytestmark = pytest.mark.usefixtures("prefect_api")
SECRET = f"whsec_{secrets.token_hex(16)}"  # random per session: the "never logged" check cannot pass by accident


@flow(name="hubflow-test-retrain")
def retrain(revision: str) -> str:
    return revision


@dataclass
class Receiver:
    url: str
    log: Path

    def post(self, body: dict, secret: str | None = SECRET, client: httpx.Client | None = None) -> httpx.Response:
        headers = {"X-Webhook-Secret": secret} if secret is not None else {}
        return (client or httpx).post(self.url, json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def deployment_id(prefect_api):
    """A deployment whose trigger is the event contract, exactly as deployments/prefect.yaml declares it."""
    from prefect.events import DeploymentEventTrigger

    trigger = DeploymentEventTrigger(match={"prefect.resource.id": "hub.dataset.*"}, expect={"hub.dataset.updated"},
                                     parameters={"revision": "{{ event.payload.revision }}"})
    return retrain.to_deployment(name="on-hub-dataset-update", triggers=[trigger]).apply()


@pytest.fixture(scope="module")
def receiver(prefect_api, tmp_path_factory) -> Receiver:
    """`hubflow webhooks serve` on a free port, emitting to the test Prefect server."""
    from prefect.settings import PREFECT_API_URL

    state = tmp_path_factory.mktemp("receiver-state")
    log, port = state / "receiver.log", free_port()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "HUBFLOW_WEBHOOK_SECRET": SECRET}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [Path(sys.executable).parent / "hubflow", "webhooks", "serve", "--port", str(port),
             "--state-dir", str(state)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"the receiver exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the receiver did not answer /health within 60 s"
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    yield Receiver(url=f"{base}/webhooks/hub", log=log)
    proc.terminate()
    proc.wait(15)
    assert SECRET not in log.read_text()


def payload(repo_id: str, sha: str, repo_type: str = "dataset", ref: str = "refs/heads/main",
            scope: str = "repo.content") -> dict:
    """The Hub's v3 payload for a commit (the shape localhub/webhooks.py sends)."""
    url = f"http://hub.invalid/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    return {"event": {"action": "update", "scope": scope},
            "repo": {"type": repo_type, "name": repo_id, "id": "0" * 24, "private": False, "headSha": sha,
                     "url": {"web": url, "api": url}, "owner": {"id": "1" * 24}, "tags": []},
            "webhook": {"id": "2" * 24, "version": 3},
            "updatedRefs": [{"ref": ref, "oldSha": "3" * 40, "newSha": sha}]}


def runs_for(deployment_id, sha: str, timeout: float = 30, settle: float = 2.0) -> list:
    """The deployment's runs with `revision == sha`: wait for the first, then `settle` seconds for any extra."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    def read() -> list:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        return [r for r in runs if r.parameters.get("revision") == sha]

    deadline = time.monotonic() + timeout
    while not read() and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(settle)
    return read()


def test_deliveries_without_the_right_secret_are_refused(receiver: Receiver):
    body = payload(f"alice/guarded-{uuid.uuid4().hex[:8]}", secrets.token_hex(20), repo_type="model")
    for secret in (None, "", "wrong", SECRET + "x", SECRET[:-1]):
        answer = receiver.post(body, secret=secret)
        assert answer.status_code == 401, secret
        assert "emitted" not in answer.json()
    answer = receiver.post(body)  # the refused deliveries claimed nothing: the first good one still emits
    assert answer.status_code == 202 and answer.json()["emitted"] is True
    assert SECRET not in receiver.log.read_text()


def test_only_commits_to_the_branch_of_datasets_and_models_are_announced(receiver: Receiver):
    repo, sha = f"alice/filtered-{uuid.uuid4().hex[:8]}", secrets.token_hex(20)
    assert receiver.post({"event": {"action": "update"}}).status_code == 400
    assert httpx.post(receiver.url, content=b"{not json", headers={"X-Webhook-Secret": SECRET}).status_code == 400
    ignored = [payload(repo, sha, ref="refs/tags/v1"), payload(repo, sha, ref="refs/heads/dev"),
               payload(repo, sha, repo_type="space"), payload(repo, sha, scope="repo")]
    for body in ignored:
        answer = receiver.post(body)
        assert answer.status_code == 202 and answer.json()["emitted"] is False, body
        assert answer.json()["reason"].startswith("ignored")
    deleted = payload(repo, sha)
    deleted["updatedRefs"][0]["newSha"] = None  # a deleted branch has no new commit
    assert receiver.post(deleted).json()["emitted"] is False


def test_a_dataset_commit_starts_one_run(receiver, deployment_id, hf_api, localhub, new_repo_id, monkeypatch, capsys):
    from hubflow.ops.cli import main

    repo_id = new_repo_id()
    hf_api.create_repo(repo_id, repo_type="dataset")
    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    monkeypatch.setenv("HUBFLOW_WEBHOOK_SECRET", SECRET)
    registered = []
    for _ in range(2):  # idempotent: the second call finds the webhook by its URL
        main(["webhooks", "register", "--url", receiver.url, "--watch", f"dataset:{repo_id}"])
        registered.append(json.loads(capsys.readouterr().out))
    assert [r["created"] for r in registered] == [True, False]
    assert registered[0]["id"] == registered[1]["id"] and registered[1]["watched"] == [f"dataset:{repo_id}"]
    (hook,) = [h for h in hf_api.list_webhooks() if h.url == receiver.url]
    assert (hook.secret, hook.domains) == (SECRET, ["repo"])

    commit = hf_api.upload_file(path_or_fileobj=b"text,label\nhello,0\n", path_in_repo="train.csv", repo_id=repo_id,
                                repo_type="dataset")
    (run,) = runs_for(deployment_id, commit.oid)
    assert run.state.is_scheduled()


def test_a_burst_of_duplicate_deliveries_starts_one_run(receiver: Receiver, deployment_id):
    sha = secrets.token_hex(20)
    body = payload(f"alice/bursty-{uuid.uuid4().hex[:8]}", sha)
    with httpx.Client() as client, ThreadPoolExecutor(16) as pool:  # 16 in flight at once, as a retrying Hub might
        answers = list(pool.map(lambda _: receiver.post(body, client=client), range(50)))
    assert [a.status_code for a in answers] == [202] * 50
    assert sum(a.json()["emitted"] for a in answers) == 1
    assert {a.json()["event_id"] for a in answers} == {str(hub_event_id("dataset", body["repo"]["name"], sha))}
    assert len(runs_for(deployment_id, sha)) == 1


def test_the_sensor_announces_each_new_commit_once(deployment_id, hf_api, new_repo_id, monkeypatch, tmp_path):
    from hubflow.config import WatchedRepo
    from hubflow.flows.watch import watch_hub

    monkeypatch.setenv("HUBFLOW_STATE_DIR", str(tmp_path))
    repo_id = new_repo_id()
    hf_api.create_repo(repo_id, repo_type="dataset")
    repos = [WatchedRepo(repo_type="dataset", repo_id=repo_id)]
    assert watch_hub(repos) == []  # the first poll records the baseline
    commit = hf_api.upload_file(path_or_fileobj=b"text,label\nhi,1\n", path_in_repo="train.csv", repo_id=repo_id,
                                repo_type="dataset")
    assert watch_hub(repos) == [str(hub_event_id("dataset", repo_id, commit.oid))]
    assert watch_hub(repos) == []  # nothing changed since
    (run,) = runs_for(deployment_id, commit.oid)
    assert run.parameters == {"revision": commit.oid}


def test_prefect_drops_a_repeated_event_id(deployment_id, tmp_path):
    """Two emitters that share no dedup record (a receiver and a sensor on different hosts) announce the same
    revision, so the same deterministic id; Prefect's trigger service runs the deployment once. A second line of
    defence, not the only one: its memory of ids lasts 30 minutes and dies with the server process."""
    repo, sha = f"alice/twice-{uuid.uuid4().hex[:8]}", secrets.token_hex(20)
    assert emit_hub_update("dataset", repo, sha, seen=SeenRevisions(tmp_path / "receiver")) is not None
    assert len(runs_for(deployment_id, sha, settle=0)) == 1
    # Only once the first has been sent: one process's events worker cannot queue two events with one id (the
    # second fails with a KeyError in its context cache and is dropped there, never reaching the server).
    assert emit_hub_update("dataset", repo, sha, seen=SeenRevisions(tmp_path / "sensor")) is not None
    assert len(runs_for(deployment_id, sha, settle=3)) == 1


def test_the_dedup_record_survives_restarts_and_races(tmp_path):
    eid = hub_event_id("dataset", "alice/x", "a" * 40)
    with ThreadPoolExecutor(16) as pool:
        record = SeenRevisions(tmp_path)
        claims = list(pool.map(lambda _: record.claim(eid, "dataset", "alice/x", "a" * 40, "webhook"), range(50)))
    assert claims.count(True) == 1
    record.close()
    restarted = SeenRevisions(tmp_path)  # a new process reads the same file
    assert restarted.claim(eid, "dataset", "alice/x", "a" * 40, "sensor") is False
    restarted.release(eid)
    assert restarted.claim(eid, "dataset", "alice/x", "a" * 40, "sensor") is True


def test_the_receiver_refuses_to_start_without_a_secret(monkeypatch, tmp_path):
    from hubflow.ops.cli import main

    monkeypatch.delenv("HUBFLOW_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("HUBFLOW_WEBHOOK_SECRET_BLOCK", raising=False)
    with pytest.raises(SystemExit, match="no secret"):
        main(["webhooks", "serve", "--port", str(free_port()), "--state-dir", str(tmp_path)])


def _start_receiver(api_url: str, state: Path) -> tuple[subprocess.Popen, Receiver]:
    log, port = state / f"receiver-{uuid.uuid4().hex[:6]}.log", free_port()
    env = {**os.environ, "PREFECT_API_URL": api_url, "HUBFLOW_WEBHOOK_SECRET": SECRET}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [Path(sys.executable).parent / "hubflow", "webhooks", "serve", "--port", str(port),
             "--state-dir", str(state)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, Receiver(url=f"{base}/webhooks/hub", log=log)
        except httpx.TransportError:
            time.sleep(0.2)


def test_with_prefect_down_the_event_is_refused_and_a_redelivery_retrains_once(deployment_id, tmp_path):
    """At least once: 503 while Prefect is unreachable (the Hub retries), nothing recorded as seen; the redelivery,
    once Prefect is back, emits, and exactly one run starts."""
    from prefect.settings import PREFECT_API_URL

    state, sha = tmp_path / "state", uuid.uuid4().hex + uuid.uuid4().hex[:8]
    state.mkdir()
    down, receiver = _start_receiver(f"http://127.0.0.1:{free_port()}/api", state)  # nothing listens there
    try:
        refused = receiver.post(payload("alice/prefect-down", sha))
        assert refused.status_code == 503 and refused.json()["emitted"] is False
    finally:
        down.terminate()
        down.wait(15)
    up, receiver = _start_receiver(PREFECT_API_URL.value(), state)  # same record of seen revisions
    try:
        accepted = receiver.post(payload("alice/prefect-down", sha))
        assert accepted.status_code == 202 and accepted.json()["emitted"] is True
        assert len(runs_for(deployment_id, sha)) == 1
    finally:
        up.terminate()
        up.wait(15)


@pytest.mark.parametrize("change, message", [
    ({"updatedRefs": [{"ref": "refs/heads/main", "oldSha": "3" * 40, "newSha": "not-a-sha"}]}, "not a commit sha"),
    ({"repo": {"name": "../../etc"}}, "not a Hub repo id"),
    ({"repo": {"name": "a/b/c"}}, "not a Hub repo id"),
])
def test_malformed_shas_and_repo_ids_are_refused(receiver: Receiver, change, message):
    body = payload("alice/ok", "4" * 40)
    for key, value in change.items():
        body[key] = {**body[key], **value} if isinstance(value, dict) else value
    response = receiver.post(body)
    assert response.status_code == 400 and message in response.json()["error"]
