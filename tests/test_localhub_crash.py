"""Crash safety: `kill -9` localhub in the middle of a big LFS upload, restart it on the same data dir, and check
that every acknowledged commit is intact, no half-written blob is visible, and the repo takes new commits."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, snapshot_download

from localhub import LocalHub

MB = 1 << 20
USERS = {"alice": ("crash-alice-token", "write")}


def start_lfs_put(hub: LocalHub, repo: str, total: int, sent_enough: threading.Event, release: threading.Event):
    """Announce a `total`-byte object through the LFS batch API, then PUT it to the one-time href in 1 MiB chunks:
    after half of it, set `sent_enough` and stall until `release` (the server is killed in between)."""
    block = os.urandom(MB)
    chunks = [i.to_bytes(8, "little") + block[8:] for i in range(total // MB)]
    oid, size = hashlib.sha256(b"".join(chunks)).hexdigest(), total  # a real object: were it finished, it would be kept
    batch = httpx.post(
        f"{hub.url}/{repo}.git/info/lfs/objects/batch",
        headers={"authorization": f"Bearer {hub.token('alice')}", "content-type": "application/vnd.git-lfs+json"},
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}],
              "hash_algo": "sha256"},
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]

    def body():
        for i, chunk in enumerate(chunks):
            if i == len(chunks) // 2:
                sent_enough.set()
                release.wait(30)
            yield chunk

    def put():
        try:
            httpx.put(href, content=body(), headers={"content-length": str(size)}, timeout=30)
        except httpx.HTTPError:
            pass  # expected: the server dies under it

    thread = threading.Thread(target=put, daemon=True)
    thread.start()
    return oid, thread


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_mid_upload_keeps_acknowledged_commits(tmp_path: Path):
    data_dir = tmp_path / "hub"
    hub = LocalHub(data_dir, users=USERS).start()
    try:
        api = HfApi(endpoint=hub.url, token=hub.token("alice"))
        repo = "alice/crashy"
        api.create_repo(repo)
        expected: dict[str, dict[str, bytes]] = {}  # commit sha -> its files (besides .gitattributes)
        files: dict[str, bytes] = {}
        for i in range(3):
            ops = [CommitOperationAdd(f"notes/{i}.txt", f"note {i}".encode()),
                   CommitOperationAdd(f"w{i}.safetensors", os.urandom(50_000)),  # LFS
                   CommitOperationAdd("shared.txt", f"version {i}".encode())]
            if i == 2:
                ops.append(CommitOperationDelete("w0.safetensors"))
            for op in ops:
                if isinstance(op, CommitOperationAdd):
                    files[op.path_in_repo] = op.path_or_fileobj
                else:
                    files.pop(op.path_in_repo)
            sha = api.create_commit(repo, operations=ops, commit_message=f"commit {i}").oid
            expected[sha] = dict(files)

        sent_enough, release = threading.Event(), threading.Event()
        oid, putter = start_lfs_put(hub, repo, 150 * MB, sent_enough, release)
        assert sent_enough.wait(30)
        # The server has streamed part of the object into tmp/ by now: kill it there.
        wait_for(lambda: any(p.stat().st_size > 0 for p in (data_dir / "tmp").iterdir()))
        hub.kill()
        release.set()
        putter.join(30)
    finally:
        hub.stop()

    hub = LocalHub(data_dir, users=USERS).start()
    try:
        api = HfApi(endpoint=hub.url, token=hub.token("alice"))
        history = [c.commit_id for c in api.list_repo_commits(repo)]
        assert list(expected) == history[:-1][::-1] and api.model_info(repo).sha == history[0]
        for n, (sha, want) in enumerate(expected.items()):
            snap = Path(snapshot_download(repo, revision=sha, cache_dir=tmp_path / f"cache{n}", endpoint=hub.url))
            got = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
            got.pop(".gitattributes")
            assert got == want, f"commit {sha} changed"

        assert list((data_dir / "tmp").iterdir()) == []
        blobs = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
        assert blobs and not any(p.name == oid for p in blobs)
        for p in blobs:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"{p} does not hold its own content"

        big = os.urandom(12 * MB)  # LFS again, through the real client, on the restarted server
        new = api.upload_file(path_or_fileobj=big, path_in_repo="big.bin", repo_id=repo).oid
        snap = Path(snapshot_download(repo, revision=new, cache_dir=tmp_path / "after", endpoint=hub.url))
        assert (snap / "big.bin").read_bytes() == big and (snap / "shared.txt").read_text() == "version 2"
    finally:
        hub.stop()
