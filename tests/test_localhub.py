"""localhub through the real, unmodified HF clients over HTTP: repos, downloads, uploads, auth, concurrency, startup.

Run: `.venv/bin/pytest tests/test_localhub.py -q` (the `localhub` fixture in conftest.py serves HF_ENDPOINT).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from localhub import LocalHub
from localhub.cli import add_serve_parser

MB = 1 << 20


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def counted_requests():
    """Every HTTP request huggingface_hub makes goes through its one shared client (`get_session()`); install a
    factory that adds a request hook to the default client, and record the requests made inside the block."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    seen: list[str] = []

    def factory():
        client = default_client_factory()
        client.event_hooks["request"].append(lambda req: seen.append(f"{req.method} {req.url}"))
        return client

    set_client_factory(factory)
    try:
        yield seen
    finally:
        set_client_factory(default_client_factory)


@pytest.fixture
def repo(hf_api: HfApi, new_repo_id) -> str:
    """A fresh public model repo of alice's."""
    repo_id = new_repo_id()
    hf_api.create_repo(repo_id)
    return repo_id


# ---- 1. repos ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("repo_type,kwargs", [("model", {}), ("dataset", {}), ("space", {"space_sdk": "static"})])
def test_create_exist_ok_conflict_settings_delete(hf_api: HfApi, new_repo_id, repo_type, kwargs):
    repo_id = new_repo_id()
    url = hf_api.create_repo(repo_id, repo_type=repo_type, private=True, **kwargs)
    assert url.repo_id == repo_id and url.repo_type == repo_type
    assert hf_api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, **kwargs).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_repo(repo_id, repo_type=repo_type, **kwargs)
    assert err.value.response.status_code == 409

    info = hf_api.repo_info(repo_id, repo_type=repo_type)
    assert info.private is True and info.sha
    hf_api.update_repo_settings(repo_id, repo_type=repo_type, private=False)
    assert hf_api.repo_info(repo_id, repo_type=repo_type).private is False

    hf_api.delete_repo(repo_id, repo_type=repo_type)
    assert not hf_api.repo_exists(repo_id, repo_type=repo_type)
    with pytest.raises(RepositoryNotFoundError):
        hf_api.delete_repo(repo_id, repo_type=repo_type)


def test_initial_commit_carries_gitattributes(hf_api: HfApi, repo: str):
    commits = hf_api.list_repo_commits(repo)
    assert len(commits) == 1
    assert hf_api.list_repo_files(repo) == [".gitattributes"]
    attrs = Path(hf_hub_download(repo, ".gitattributes", revision=commits[0].commit_id)).read_text()
    assert "*.safetensors filter=lfs" in attrs and "*.parquet filter=lfs" in attrs


def test_revisions_refs_commits_branches_tags(hf_api: HfApi, repo: str):
    first = hf_api.upload_file(path_or_fileobj=b"one", path_in_repo="f.txt", repo_id=repo, commit_message="one").oid
    hf_api.create_tag(repo, tag="v1")
    hf_api.create_branch(repo, branch="dev")
    second = hf_api.upload_file(path_or_fileobj=b"two", path_in_repo="f.txt", repo_id=repo, commit_message="two").oid

    for rev in ("main", "refs/heads/main", second, second[:7]):
        assert hf_api.model_info(repo, revision=rev).sha == second, rev
    for rev in ("v1", "dev", "refs/tags/v1", first, first[:10]):
        assert hf_api.model_info(repo, revision=rev).sha == first, rev
    with pytest.raises(RevisionNotFoundError):
        hf_api.model_info(repo, revision="nope")

    refs = hf_api.list_repo_refs(repo)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second, "dev": first}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", first)]

    commits = hf_api.list_repo_commits(repo)
    assert [c.commit_id for c in commits[:2]] == [second, first]
    assert [c.title for c in commits] == ["two", "one", "initial commit"]
    assert commits[0].authors == ["alice"]
    assert len(hf_api.list_repo_commits(repo, revision="v1")) == 2

    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_branch(repo, branch="dev")
    assert err.value.response.status_code == 409
    hf_api.create_branch(repo, branch="dev", exist_ok=True)
    hf_api.create_branch(repo, branch="from-v1", revision="v1")
    assert hf_api.model_info(repo, revision="from-v1").sha == first
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_tag(repo, tag="v1")
    assert err.value.response.status_code == 409
    for bad in ("has space", "a..b", second):  # a 40-hex name would shadow that commit's sha
        with pytest.raises(HfHubHTTPError) as err:
            hf_api.create_tag(repo, tag=bad)
        assert err.value.response.status_code == 400, bad

    hf_api.delete_branch(repo, branch="dev")
    hf_api.delete_tag(repo, tag="v1")
    refs = hf_api.list_repo_refs(repo)
    assert {b.name for b in refs.branches} == {"main", "from-v1"} and refs.tags == []
    with pytest.raises(RevisionNotFoundError):
        hf_api.model_info(repo, revision="v1")


def test_tree_and_paths_info(hf_api: HfApi, repo: str, tmp_path: Path):
    write(tmp_path / "README.md", "# hi\n")
    write(tmp_path / "a" / "x.txt", "x")
    write(tmp_path / "a" / "b" / "y.txt", "yy")
    write(tmp_path / "w.safetensors", os.urandom(2000))
    sha = hf_api.upload_folder(folder_path=tmp_path, repo_id=repo).oid

    recursive = {e.path: e for e in hf_api.list_repo_tree(repo, recursive=True, revision=sha)}
    assert set(recursive) == {".gitattributes", "README.md", "a", "a/b", "a/x.txt", "a/b/y.txt", "w.safetensors"}
    assert isinstance(recursive["a/b"], RepoFolder) and isinstance(recursive["a/b/y.txt"], RepoFile)
    assert recursive["a/b/y.txt"].size == 2 and recursive["a/b/y.txt"].lfs is None
    assert recursive["w.safetensors"].lfs.sha256 == sha256(tmp_path / "w.safetensors")
    assert recursive["w.safetensors"].blob_id != recursive["w.safetensors"].lfs.sha256  # git sha1 of the pointer

    assert {e.path for e in hf_api.list_repo_tree(repo)} == {".gitattributes", "README.md", "a", "w.safetensors"}
    assert {e.path for e in hf_api.list_repo_tree(repo, path_in_repo="a")} == {"a/b", "a/x.txt"}
    with pytest.raises(EntryNotFoundError):
        list(hf_api.list_repo_tree(repo, path_in_repo="nope"))

    infos = {e.path: e for e in hf_api.get_paths_info(repo, ["a", "a/x.txt", "w.safetensors", "missing"], revision=sha)}
    assert set(infos) == {"a", "a/x.txt", "w.safetensors"}
    assert isinstance(infos["a"], RepoFolder) and infos["a/x.txt"].size == 1 and infos["w.safetensors"].lfs


def test_list_repos_by_author_and_search(hf_api: HfApi, localhub: LocalHub, new_repo_id):
    model, dataset, space = new_repo_id(), new_repo_id(), new_repo_id()
    hf_api.create_repo(model)
    hf_api.create_repo(dataset, repo_type="dataset")
    hf_api.create_repo(space, repo_type="space", space_sdk="static")
    bob = HfApi(endpoint=localhub.url, token=localhub.token("bob"))
    bob_model = new_repo_id("bob")
    bob.create_repo(bob_model)

    needle = model.split("-")[-1]
    assert [m.id for m in hf_api.list_models(author="alice", search=needle)] == [model]
    assert [m.id for m in hf_api.list_models(search=bob_model.split("-")[-1])] == [bob_model]
    assert bob_model not in {m.id for m in hf_api.list_models(author="alice")}
    assert [d.id for d in hf_api.list_datasets(author="alice", search=dataset.split("-")[-1])] == [dataset]
    assert [s.id for s in hf_api.list_spaces(author="alice", search=space.split("-")[-1])] == [space]


# ---- 2. downloads ------------------------------------------------------------------------------------------------

def test_pinned_round_trip_and_snapshot_after_later_commit(hf_api: HfApi, repo: str, tmp_path: Path):
    src = tmp_path / "src"
    write(src / "keep.txt", "keep")
    write(src / "change.txt", "v1")
    write(src / "gone.txt", "bye")
    write(src / "nested" / "model.safetensors", os.urandom(3000))
    v1 = hf_api.upload_folder(folder_path=src, repo_id=repo).oid
    hf_api.create_commit(repo, commit_message="edit", operations=[
        CommitOperationAdd("change.txt", b"v2"),
        CommitOperationAdd("new.txt", b"new"),
        CommitOperationDelete("gone.txt"),
    ])

    snap = Path(snapshot_download(repo, revision=v1, cache_dir=tmp_path / "cache"))
    got = {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()}
    assert got == {".gitattributes", "keep.txt", "change.txt", "gone.txt", "nested/model.safetensors"}
    for rel in got - {".gitattributes"}:
        assert (snap / rel).read_bytes() == (src / rel).read_bytes(), rel

    one = hf_hub_download(repo, "nested/model.safetensors", revision=v1, cache_dir=tmp_path / "cache2")
    assert Path(one).read_bytes() == (src / "nested/model.safetensors").read_bytes()
    latest = Path(snapshot_download(repo, cache_dir=tmp_path / "cache"))
    assert (latest / "change.txt").read_text() == "v2" and not (latest / "gone.txt").exists()


def test_warm_pinned_snapshot_makes_zero_requests(hf_api: HfApi, repo: str, tmp_path: Path):
    # Counted at the client's own HTTP session (see `counted_requests`), not by stopping the server or pointing at a
    # dead endpoint: on a connection error snapshot_download silently falls back to the cache, so those would pass
    # even if requests were made. The cold call shows that the hook sees the traffic.
    sha = hf_api.upload_file(path_or_fileobj=b"data", path_in_repo="d.txt", repo_id=repo).oid
    with counted_requests() as cold:
        first = snapshot_download(repo, revision=sha, cache_dir=tmp_path)
    assert any("/tree/" in r for r in cold)  # the hook does see the client's traffic
    with counted_requests() as warm:
        second = snapshot_download(repo, revision=sha, cache_dir=tmp_path)
    assert first == second and warm == []


def test_range_requests(hf_api: HfApi, localhub: LocalHub, repo: str):
    data = os.urandom(300_000)
    sha = hf_api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id=repo).oid
    r = httpx.get(f"{localhub.url}/{repo}/resolve/{sha}/blob.bin", headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"

    fs = HfFileSystem(endpoint=localhub.url, token=localhub.token("alice"))
    with fs.open(f"{repo}/blob.bin", "rb", revision=sha, block_size=4096) as f:
        f.seek(123_456)
        assert f.read(10_000) == data[123_456:133_456]


def test_missing_file_is_entry_not_found(repo: str, localhub: LocalHub, tmp_path: Path):
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "nope.txt", cache_dir=tmp_path)
    r = httpx.head(f"{localhub.url}/{repo}/resolve/main/nope.txt")
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound" and r.headers["x-repo-commit"]
    # The error message quotes the path: a CR/LF in it must not break (or split) the response headers.
    r = httpx.get(f"{localhub.url}/{repo}/resolve/main/a%0D%0AX-Injected:%201")
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound" and "x-injected" not in r.headers


# ---- 3. uploads --------------------------------------------------------------------------------------------------

def test_upload_folder_regular_and_lfs(hf_api: HfApi, repo: str, tmp_path: Path):
    write(tmp_path / "config.json", '{"a": 1}')
    write(tmp_path / "weights.safetensors", os.urandom(5000))
    write(tmp_path / "big.dat", os.urandom(11 * MB))  # >= 10 MB: LFS by size, whatever the name
    write(tmp_path / "empty.txt", b"")
    sha = hf_api.upload_folder(folder_path=tmp_path, repo_id=repo).oid

    tree = {e.path: e for e in hf_api.list_repo_tree(repo, revision=sha)}
    assert tree["config.json"].lfs is None and tree["empty.txt"].size == 0
    for name in ("weights.safetensors", "big.dat"):
        assert tree[name].lfs.sha256 == sha256(tmp_path / name) and tree[name].size == (tmp_path / name).stat().st_size
    for name in ("config.json", "weights.safetensors", "big.dat", "empty.txt"):
        got = hf_hub_download(repo, name, revision=sha, cache_dir=tmp_path / "cache")
        assert sha256(got) == sha256(tmp_path / name), name

    odd = "sub dir/ünï cödé #1 (v2)?.json"  # percent-encoded by the client, one segment at a time
    single = hf_api.upload_file(path_or_fileobj=tmp_path / "config.json", path_in_repo=odd, repo_id=repo)
    assert Path(hf_hub_download(repo, odd, revision=single.oid, cache_dir=tmp_path / "c")).read_text() == '{"a": 1}'
    assert odd in hf_api.list_repo_files(repo, revision=single.oid)


def test_create_commit_add_delete_folder_and_parent_check(hf_api: HfApi, repo: str):
    base = hf_api.create_commit(repo, commit_message="base", operations=[
        CommitOperationAdd("keep.txt", b"k"), CommitOperationAdd("dir/a.txt", b"a"),
        CommitOperationAdd("dir/sub/b.txt", b"b"), CommitOperationAdd("old.txt", b"o"),
    ]).oid
    nxt = hf_api.create_commit(repo, commit_message="mix", parent_commit=base, operations=[
        CommitOperationAdd("new.txt", b"n"),
        CommitOperationDelete("old.txt"),
        CommitOperationDelete("dir/", is_folder=True),
    ]).oid
    assert sorted(hf_api.list_repo_files(repo, revision=nxt)) == [".gitattributes", "keep.txt", "new.txt"]

    with pytest.raises(HfHubHTTPError) as err:  # `base` is no longer the head
        hf_api.create_commit(repo, commit_message="stale", parent_commit=base,
                             operations=[CommitOperationAdd("x.txt", b"x")])
    assert err.value.response.status_code == 412
    assert hf_api.model_info(repo).sha == nxt


def test_unchanged_upload_makes_no_commit(hf_api: HfApi, repo: str, tmp_path: Path):
    write(tmp_path / "a.txt", "a")
    write(tmp_path / "w.safetensors", os.urandom(1000))
    first = hf_api.upload_folder(folder_path=tmp_path, repo_id=repo).oid
    n = len(hf_api.list_repo_commits(repo))
    again = hf_api.upload_folder(folder_path=tmp_path, repo_id=repo).oid
    assert again == first and len(hf_api.list_repo_commits(repo)) == n


def test_transformers_push_and_pinned_from_pretrained(hf_api: HfApi, localhub: LocalHub, repo: str, tmp_path: Path):
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

    token = localhub.token("alice")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(90)] + ["hello", "world"]
    vocab = write(tmp_path / "vocab.txt", "\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                 vocab_size=len(words))).eval()
    tokenizer.push_to_hub(repo, token=token)
    sha = model.push_to_hub(repo, token=token).oid

    files = set(hf_api.list_repo_files(repo, revision=sha))
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= files
    batch = tokenizer(["hello world w3"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
    tok2 = AutoTokenizer.from_pretrained(repo, revision=sha, token=token, cache_dir=tmp_path / "cache")
    model2 = AutoModel.from_pretrained(repo, revision=sha, token=token, cache_dir=tmp_path / "cache").eval()
    batch2 = tok2(["hello world w3"], return_tensors="pt")
    assert batch2["input_ids"].tolist() == batch["input_ids"].tolist()
    with torch.no_grad():
        assert torch.allclose(model2(**batch2).last_hidden_state, expected, atol=1e-6)


def test_dataset_push_and_pinned_load(hf_api: HfApi, localhub: LocalHub, datasets_lib, new_repo_id, tmp_path: Path):
    token = localhub.token("alice")
    rows = {"text": [f"row {i}" for i in range(20)], "label": [i % 3 for i in range(20)]}
    repo_id = new_repo_id()
    datasets_lib.Dataset.from_dict(rows).push_to_hub(repo_id, token=token)
    sha = hf_api.dataset_info(repo_id).sha
    assert any(f.endswith(".parquet") for f in hf_api.list_repo_files(repo_id, repo_type="dataset"))
    loaded = datasets_lib.load_dataset(repo_id, revision=sha, token=token, cache_dir=str(tmp_path / "ds"))
    assert loaded["train"].to_dict() == rows
    at_main = datasets_lib.load_dataset(repo_id, split="train", token=token, cache_dir=str(tmp_path / "ds2"))
    assert at_main.to_dict() == rows


def test_hf_filesystem_put_ls_open_rm(localhub: LocalHub, repo: str, tmp_path: Path):
    fs = HfFileSystem(endpoint=localhub.url, token=localhub.token("alice"))
    local = write(tmp_path / "f.txt", "file system")
    fs.put_file(str(local), f"{repo}/dir/f.txt")
    assert fs.ls(f"{repo}/dir", detail=False) == [f"{repo}/dir/f.txt"]
    with fs.open(f"{repo}/dir/f.txt", "rb") as f:
        assert f.read() == b"file system"
    assert fs.info(f"{repo}/dir/f.txt")["size"] == len("file system")
    fs.rm(f"{repo}/dir/f.txt")
    assert not fs.exists(f"{repo}/dir/f.txt")
    assert "dir/f.txt" not in HfApi(endpoint=localhub.url).list_repo_files(repo)


# ---- 4. auth -----------------------------------------------------------------------------------------------------

def test_auth_matrix(hf_api: HfApi, localhub: LocalHub, new_repo_id):
    anonymous = HfApi(endpoint=localhub.url, token=False)
    bob = HfApi(endpoint=localhub.url, token=localhub.token("bob"))
    reader = HfApi(endpoint=localhub.url, token=localhub.token("reader"))
    private, public = new_repo_id(), new_repo_id()
    hf_api.create_repo(private, private=True)
    hf_api.create_repo(public)
    hf_api.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=private)

    for api in (anonymous, bob):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info(private)
        with pytest.raises(RepositoryNotFoundError):
            api.hf_hub_download(private, "s.txt")
        assert private not in {m.id for m in api.list_models(author="alice")}
    assert hf_api.model_info(private).private is True
    for api in (anonymous, bob, reader, hf_api):
        assert api.model_info(public).id == public

    with pytest.raises(HfHubHTTPError) as err:  # a read token cannot write, even to its own namespace
        reader.create_repo(new_repo_id("reader"))
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:  # another user's namespace
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=public)
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        bob.create_repo(new_repo_id("alice"))
    assert err.value.response.status_code == 403

    bad = HfApi(endpoint=localhub.url, token="hf_not_a_token")
    with pytest.raises(HfHubHTTPError) as err:
        bad.model_info(public)
    assert err.value.response.status_code == 401
    assert err.value.response.headers["x-error-message"] == "Invalid credentials in Authorization header"

    me = reader.whoami()
    assert me["name"] == "reader" and me["auth"]["accessToken"]["role"] == "read"
    assert hf_api.whoami()["auth"]["accessToken"]["role"] == "write"

    log = Path(localhub.log_file).read_text(errors="replace")
    for user in ("alice", "bob", "reader"):
        assert localhub.token(user) not in log


def test_commit_payload_cannot_escape_the_blob_store(localhub: LocalHub, repo: str):
    """No real client sends these; a hostile one might. The NDJSON is written by hand, as the client would send it."""
    headers = {"authorization": f"Bearer {localhub.token('alice')}", "content-type": "application/x-ndjson"}

    def commit(*ops: dict) -> httpx.Response:
        lines = [{"key": "header", "value": {"summary": "hostile"}}, *ops]
        return httpx.post(f"{localhub.url}/api/models/{repo}/commit/main", headers=headers,
                          content="\n".join(json.dumps(line) for line in lines))

    size = Path("/etc/hostname").stat().st_size if Path("/etc/hostname").exists() else 1
    escape = {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": "../" * 12 + "etc/hostname",
                                           "size": size}}
    assert commit(escape).status_code == 400
    for bad in ("../up.txt", "/abs.txt", "a//b.txt", ".git/config", "a/./b"):
        assert commit({"key": "file",
                       "value": {"path": bad, "content": "eA==", "encoding": "base64"}}).status_code == 400
    clash = commit({"key": "file", "value": {"path": "d", "content": "eA==", "encoding": "base64"}},
                   {"key": "file", "value": {"path": "d/e", "content": "eA==", "encoding": "base64"}})
    assert clash.status_code == 400
    assert commit({"key": "nonsense"}).status_code == 400
    r = httpx.post(f"{localhub.url}/api/models/{repo}/commit/main", headers=headers, content="{not json")
    assert r.status_code == 400
    assert HfApi(endpoint=localhub.url).list_repo_files(repo) == [".gitattributes"]


# ---- 5. concurrency ----------------------------------------------------------------------------------------------

def test_parallel_uploads_keep_linear_history(hf_api: HfApi, repo: str, tmp_path: Path):
    def upload(i: int) -> str:
        return hf_api.upload_file(path_or_fileobj=f"file {i}".encode(), path_in_repo=f"p/{i}.txt", repo_id=repo).oid

    with ThreadPoolExecutor(8) as pool:
        oids = list(pool.map(upload, range(8)))
    assert len(set(oids)) == 8
    head = hf_api.model_info(repo).sha
    assert {f"p/{i}.txt" for i in range(8)} <= set(hf_api.list_repo_files(repo, revision=head))
    history = [c.commit_id for c in hf_api.list_repo_commits(repo)]
    assert len(history) == 9 and set(oids) <= set(history)  # 8 uploads on top of the initial commit, none lost

    with ThreadPoolExecutor(4) as pool:
        snaps = list(pool.map(lambda i: snapshot_download(repo, revision=head, cache_dir=tmp_path / str(i)), range(4)))
    for snap in snaps:
        assert sorted(p.name for p in (Path(snap) / "p").iterdir()) == sorted(f"{i}.txt" for i in range(8))
        assert (Path(snap) / "p" / "5.txt").read_text() == "file 5"


# ---- 6. server -----------------------------------------------------------------------------------------------------

def test_server_starts_fast_and_serve_help_lists_every_option(tmp_path: Path):
    t0 = time.monotonic()
    hub = LocalHub(tmp_path / "fresh", users={"u": ("t", "write")}).start()
    try:
        elapsed = time.monotonic() - t0
        assert httpx.get(f"{hub.url}/api/health").json() == {"ok": True}
    finally:
        hub.stop()
    assert elapsed < 2.0, f"localhub took {elapsed:.2f}s to start"

    # Every option the parser knows has help text, and shows in `serve --help`.
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    options = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert {o.dest for o in options} >= {"host", "port", "data", "token", "seed"}
    for cmd in (["-m", "localhub", "serve", "--help"],
                ["-c", "from hubflow.ops.cli import main; main()", "hub", "serve", "--help"]):
        out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, check=True).stdout
        for option in options:
            assert option.help and option.option_strings[-1] in out, (cmd, option.dest)
