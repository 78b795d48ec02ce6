"""LFS purges (`permanently_delete_lfs_files`, POST .../lfs-files/batch) act only on the caller's repo's objects.

An object is a repo's when a commit of its history names it, or when it was uploaded through that repo's LFS batch
endpoint. Two users, the real HfApi and raw HTTP against a localhub subprocess. ~5 s.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants

from localhub import LocalHub

USERS = {"alice": (f"hf_alice_{secrets.token_hex(8)}", "write"), "bob": (f"hf_bob_{secrets.token_hex(8)}", "write")}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> LocalHub:
    constants.HF_HUB_DISABLE_XET = True  # localhub speaks plain LFS
    h = LocalHub(tmp_path_factory.mktemp("purge") / "hub", users=USERS).start()
    yield h
    h.stop()


def api(hub: LocalHub, user: str) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token(user))


def purge(hub: LocalHub, user: str, repo_id: str, sha: str) -> httpx.Response:
    return httpx.post(f"{hub.url}/api/models/{repo_id}/lfs-files/batch",
                      json={"deletions": {"sha": [sha], "rewriteHistory": True}},
                      headers={"authorization": f"Bearer {hub.token(user)}"}, timeout=30)


def blob(hub: LocalHub, sha: str) -> Path:
    return hub.data_dir / "blobs" / sha[:2] / sha


def test_a_writer_cannot_purge_another_users_pending_upload(hub: LocalHub):
    alice, bob = api(hub, "alice"), api(hub, "bob")
    alice.create_repo("alice/purger")
    bob.create_repo("bob/weights")
    data = b"bob's weights " + secrets.token_bytes(2048)
    sha = hashlib.sha256(data).hexdigest()
    op = CommitOperationAdd("weights.bin", data)
    bob.preupload_lfs_files("bob/weights", additions=[op])  # uploaded, not committed yet
    assert blob(hub, sha).is_file()

    answer = purge(hub, "alice", "alice/purger", sha)  # alice knows the sha256, and writes her own repo
    assert answer.status_code == 200 and answer.json() == {"deleted": 0}
    assert blob(hub, sha).is_file(), "alice's purge of her own repo removed bob's upload"

    bob.create_commit("bob/weights", [op], commit_message="add weights")  # bob's commit still finds his bytes
    got = httpx.get(f"{hub.url}/bob/weights/resolve/main/weights.bin",
                    headers={"authorization": f"Bearer {hub.token('bob')}"})
    assert got.status_code == 200 and got.content == data

    # Now committed to bob's repo: alice's purge of her repo still leaves it, bob's own purge removes it.
    assert purge(hub, "alice", "alice/purger", sha).json() == {"deleted": 0} and blob(hub, sha).is_file()
    assert purge(hub, "bob", "bob/weights", sha).json() == {"deleted": 1}
    assert not blob(hub, sha).exists()
    assert [f.filename for f in bob.list_lfs_files("bob/weights")] == []


def test_an_object_two_repos_hold_outlives_one_purge(hub: LocalHub):
    alice, bob = api(hub, "alice"), api(hub, "bob")
    alice.create_repo("alice/shared-a")
    bob.create_repo("bob/shared-b")
    data = b"same bytes in two repos " + secrets.token_bytes(1024)
    sha = hashlib.sha256(data).hexdigest()
    alice.create_commit("alice/shared-a", [CommitOperationAdd("w.bin", data)], commit_message="a")
    pending = CommitOperationAdd("w.bin", data)
    bob.preupload_lfs_files("bob/shared-b", additions=[pending])  # bob uploads the same content himself

    assert purge(hub, "alice", "alice/shared-a", sha).json() == {"deleted": 1}  # alice's own: gone from her repo
    assert blob(hub, sha).is_file(), "bob's pending upload of the same bytes lost its blob"
    bob.create_commit("bob/shared-b", [pending], commit_message="b")
    got = httpx.get(f"{hub.url}/bob/shared-b/resolve/main/w.bin",
                    headers={"authorization": f"Bearer {hub.token('bob')}"})
    assert got.content == data


def test_a_repos_own_pending_upload_can_be_purged(hub: LocalHub):
    alice = api(hub, "alice")
    alice.create_repo("alice/pending")
    data = b"uploaded by mistake " + secrets.token_bytes(1024)
    sha = hashlib.sha256(data).hexdigest()
    alice.preupload_lfs_files("alice/pending", additions=[CommitOperationAdd("oops.bin", data)])
    assert blob(hub, sha).is_file()
    assert purge(hub, "alice", "alice/pending", sha).status_code == 200
    assert not blob(hub, sha).exists()
