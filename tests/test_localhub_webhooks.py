"""localhub webhooks through the real `HfApi`: CRUD, delivery of the Hub's payload, retries, disabling.

Run: `.venv/bin/pytest tests/test_localhub_webhooks.py -q` (~5 s). A `http.server` receiver on 127.0.0.1 records
what the hub POSTs; `huggingface_hub.WebhookPayload` must parse every delivery.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import HfApi, WebhookPayload
from huggingface_hub.errors import HfHubHTTPError

from localhub import LocalHub

USERS = {"alice": ("hf_alice_hooks_tok", "write"), "bob": ("hf_bob_hooks_tok", "write"),
         "reader": ("hf_reader_hooks_tok", "read")}


class Receiver:
    """Records deliveries; answers the statuses queued in `fail_with` first, then 200."""

    def __init__(self):
        self.deliveries: list[dict] = []
        self.fail_with: list[int] = []
        self.attempt_times: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempt_times.append(time.monotonic())
                status = receiver.fail_with.pop(0) if receiver.fail_with else 200
                if status == 200:
                    receiver.deliveries.append({"headers": dict(self.headers), "json": json.loads(body)})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.deliveries) >= n, f"{len(self.deliveries)} deliveries, expected {n}"
        return self.deliveries

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> LocalHub:
    # Its receivers listen on loopback, which localhub refuses as a webhook target unless the operator allows it.
    h = LocalHub(tmp_path_factory.mktemp("webhooks") / "hub", users=USERS, allow_private_webhooks=True).start()
    yield h
    h.stop()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def api_for(hub: LocalHub, user: str = "alice") -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token(user))


def new_repo(api: HfApi, repo_type: str = "dataset", user: str = "alice", **kwargs) -> str:
    repo_id = f"{user}/hooked-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id, repo_type=repo_type, **kwargs)
    return repo_id


def test_commit_delivers_the_hub_payload_with_the_secret(hub: LocalHub, receiver: Receiver):
    api = api_for(hub)
    repo_id = new_repo(api)
    before = api.dataset_info(repo_id).sha
    hook = api.create_webhook(url=receiver.url, watched=[{"type": "dataset", "name": repo_id}], secret="s3cr3t")
    commit = api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data.csv", repo_id=repo_id,
                             repo_type="dataset")

    (delivery,) = receiver.wait_for(1)
    assert delivery["headers"]["X-Webhook-Secret"] == "s3cr3t"
    assert delivery["headers"]["Content-Type"] == "application/json"
    payload = WebhookPayload.model_validate(delivery["json"])
    assert (payload.event.action, payload.event.scope) == ("update", "repo.content")
    assert (payload.repo.type, payload.repo.name, payload.repo.private) == ("dataset", repo_id, False)
    assert payload.repo.url.web == f"{hub.url}/datasets/{repo_id}"
    assert payload.repo.url.api == f"{hub.url}/api/datasets/{repo_id}"
    assert delivery["json"]["repo"]["headSha"] == commit.oid
    (ref,) = payload.updatedRefs
    assert (ref.ref, ref.oldSha, ref.newSha) == ("refs/heads/main", before, commit.oid)
    assert (payload.webhook.id, payload.webhook.version) == (hook.id, 3)

    api.create_tag(repo_id, tag="v1", repo_type="dataset")
    tag = WebhookPayload.model_validate(receiver.wait_for(2)[1]["json"])
    assert [(r.ref, r.newSha) for r in tag.updatedRefs] == [("refs/tags/v1", commit.oid)]
    time.sleep(0.3)
    assert len(receiver.deliveries) == 2  # one delivery per event


def test_failed_deliveries_are_retried_with_backoff(hub: LocalHub, receiver: Receiver):
    api = api_for(hub)
    repo_id = new_repo(api, repo_type="model")
    api.create_webhook(url=receiver.url, watched=[{"type": "model", "name": repo_id}])
    receiver.fail_with = [500, 503]
    started = time.monotonic()
    commit = api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo_id)
    assert time.monotonic() - started < 1  # the commit did not wait for the webhook

    (delivery,) = receiver.wait_for(1)
    assert delivery["json"]["updatedRefs"][0]["newSha"] == commit.oid
    assert "X-Webhook-Secret" not in delivery["headers"]  # no secret configured, no header
    first, second, third = receiver.attempt_times
    assert second - first >= 0.45 and third - second >= 0.95  # 0.5 s, then 1 s


def test_disabled_webhooks_deliver_nothing(hub: LocalHub, receiver: Receiver):
    api = api_for(hub)
    repo_id = new_repo(api)
    hook = api.create_webhook(url=receiver.url, watched=[{"type": "dataset", "name": repo_id}])
    assert api.disable_webhook(hook.id).disabled is True
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, repo_type="dataset")
    time.sleep(0.5)
    assert receiver.deliveries == []

    assert api.enable_webhook(hook.id).disabled is False
    commit = api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=repo_id, repo_type="dataset")
    assert receiver.wait_for(1)[0]["json"]["updatedRefs"][0]["newSha"] == commit.oid


def test_namespace_watch_sees_creates_but_not_others_private_repos(hub: LocalHub, receiver: Receiver):
    alice, bob = api_for(hub), api_for(hub, "bob")
    alice.create_webhook(url=receiver.url, watched=[{"type": "user", "name": "bob"}])
    new_repo(bob, repo_type="model", user="bob", private=True)
    public = new_repo(bob, repo_type="space", user="bob", space_sdk="static")
    payload = WebhookPayload.model_validate(receiver.wait_for(1)[0]["json"])
    assert (payload.event.action, payload.event.scope, payload.repo.name) == ("create", "repo", public)
    assert payload.repo.subdomain == public.replace("/", "-")
    bob.delete_repo(public, repo_type="space")
    payload = WebhookPayload.model_validate(receiver.wait_for(2)[1]["json"])
    assert (payload.event.action, payload.repo.name) == ("delete", public)
    time.sleep(0.3)
    assert len(receiver.deliveries) == 2  # nothing about bob's private repo


def test_crud_round_trip_is_owner_only_and_persistent(hub: LocalHub, receiver: Receiver):
    api, bob = api_for(hub), api_for(hub, "bob")
    hook = api.create_webhook(url=receiver.url, watched=[{"type": "model", "name": "alice/a"}], domains=["repo"])
    assert (hook.url, hook.domains, hook.secret, hook.disabled, hook.job) == (receiver.url, ["repo"], None, False, None)
    assert api.get_webhook(hook.id) == hook
    assert hook.id in [h.id for h in api.list_webhooks()]

    updated = api.update_webhook(hook.id, url=receiver.url + "2", watched=[{"type": "dataset", "name": "alice/b"}],
                                 secret="new")
    assert (updated.url, updated.secret, [(w.type, w.name) for w in updated.watched]) == (
        receiver.url + "2", "new", [("dataset", "alice/b")])
    assert api.update_webhook(hook.id, secret="newer").watched == updated.watched  # no `watched`: kept

    assert hook.id not in [h.id for h in bob.list_webhooks()]
    for call in (lambda: bob.get_webhook(hook.id), lambda: bob.delete_webhook(hook.id)):
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert err.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as err:
        api_for(hub, "reader").list_webhooks()
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        api.create_webhook(url="ftp://x", watched=[{"type": "model", "name": "alice/a"}])
    assert err.value.response.status_code == 400

    hub.stop()
    hub.start()
    assert api.get_webhook(hook.id).secret == "newer"  # stored in the hub's database
    api.delete_webhook(hook.id)
    assert hook.id not in [h.id for h in api.list_webhooks()]
    with pytest.raises(HfHubHTTPError):
        api.get_webhook(hook.id)
