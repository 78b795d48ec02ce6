"""localhub's repo ids, listings and duplication through the real HfApi: what a user of `list_models` & co. sees.

Run: `.venv/bin/pytest tests/test_localhub_listing.py -q` (the `localhub` fixture in conftest.py serves HF_ENDPOINT).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    BadRequestError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import paginate

from bench.localhub_listing import seed_repos
from localhub import LocalHub, free_port

BAD_NAMES = ("a..b", "x-", "x.", "a--b")


def card(**meta) -> bytes:
    import yaml

    return f"---\n{yaml.safe_dump(meta)}---\n\n# card\n".encode()


@pytest.fixture
def tag() -> str:
    """A tag no other test's repo carries, so listings filtered by it see this test's repos only."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_repo_ids_refused_at_create_move_and_duplicate(hf_api: HfApi, new_repo_id, name: str):
    bad = f"alice/{name}"
    with pytest.raises(HFValidationError):  # the client refuses to send it...
        hf_api.create_repo(bad)
    # ...and a client that sends it anyway (the same call without its validator) gets the server's 400 and the rule.
    rule = "Cannot have -- or .." if name in ("a..b", "a--b") else "cannot start or end with '-' or '.'"
    with pytest.raises(BadRequestError, match=rule):
        HfApi.create_repo.__wrapped__(hf_api, bad)
    assert httpx.get(f"{hf_api.endpoint}/api/models/{bad}").status_code == 401  # never created: RepoNotFound
    good = new_repo_id()
    hf_api.create_repo(good)
    with pytest.raises(BadRequestError, match=rule):  # move_repo has no client-side check: the server's is the one
        hf_api.move_repo(good, bad)
    with pytest.raises(BadRequestError, match=rule):
        HfApi.duplicate_repo.__wrapped__(hf_api, good, bad)
    assert hf_api.repo_exists(good)


def test_card_metadata_becomes_tags_and_filters(hf_api: HfApi, new_repo_id, tag: str):
    a, b, c = new_repo_id(), new_repo_id(), new_repo_id()
    meta = {"tags": [tag], "library_name": "transformers", "pipeline_tag": "text-classification", "license": "mit",
            "language": ["en", "fr"], "datasets": ["alice/tickets"], "base_model": "alice/base",
            "base_model_relation": "finetune"}
    changes = {a: {}, b: {"license": "apache-2.0", "library_name": "peft"}, c: {"pipeline_tag": "fill-mask"}}
    for repo, extra in changes.items():
        hf_api.create_repo(repo)
        hf_api.upload_file(path_or_fileobj=card(**{**meta, **extra}), path_in_repo="README.md", repo_id=repo)

    info = hf_api.model_info(a)
    assert {"transformers", "text-classification", "license:mit", "en", "fr", "dataset:alice/tickets",
            "base_model:alice/base", "base_model:finetune:alice/base", tag} <= set(info.tags)
    listed = {m.id: m for m in hf_api.list_models(filter=tag)}
    assert set(listed) == {a, b, c}
    assert listed[a].pipeline_tag == "text-classification" and listed[a].library_name == "transformers"
    assert {m.id for m in hf_api.list_models(filter=[tag, "license:mit"])} == {a, c}  # several tags: AND
    assert {m.id for m in hf_api.list_models(filter=[tag, "peft"])} == {b}
    assert {m.id for m in hf_api.list_models(filter=tag, pipeline_tag="fill-mask")} == {c}
    assert {m.id for m in hf_api.list_models(trained_dataset="alice/tickets", filter=tag)} == {a, b, c}
    assert {m.id for m in hf_api.list_models(filter=[tag, "base_model:alice/base"], author="alice")} == {a, b, c}
    assert list(hf_api.list_models(filter=tag, author="bob")) == []
    assert listed[a].siblings is None  # the compact item; `full` or `cardData` give the whole info
    full = {m.id: m for m in hf_api.list_models(filter=tag, full=True, cardData=True)}
    assert full[a].card_data.license == "mit" and "README.md" in {s.rfilename for s in full[a].siblings}

    # A commit that changes README.md re-tags the repo; one that does not leaves the tags alone.
    hf_api.upload_file(path_or_fileobj=card(tags=[tag], license="cc-by-4.0"), path_in_repo="README.md", repo_id=a)
    hf_api.upload_file(path_or_fileobj=b"x", path_in_repo="other.txt", repo_id=b)
    assert {m.id for m in hf_api.list_models(filter=[tag, "license:mit"])} == {c}
    assert {m.id for m in hf_api.list_models(filter=[tag, "license:cc-by-4.0"])} == {a}
    assert {m.id for m in hf_api.list_models(filter=[tag, "peft"])} == {b}
    hf_api.delete_file("README.md", repo_id=c)
    assert {m.id for m in hf_api.list_models(filter=tag)} == {a, b}


def test_dataset_facets_spaces_and_gated(hf_api: HfApi, new_repo_id, tag: str):
    d1, d2 = new_repo_id(), new_repo_id()
    for repo, meta in ((d1, {"task_categories": ["text-classification"], "language": ["en"],
                             "size_categories": "n<1K"}),
                       (d2, {"task_categories": ["translation"], "language": ["en", "de"]})):
        hf_api.create_repo(repo, repo_type="dataset")
        hf_api.upload_file(path_or_fileobj=card(tags=[tag], **meta), path_in_repo="README.md", repo_id=repo,
                           repo_type="dataset")
    assert {d.id for d in hf_api.list_datasets(filter=tag, language="en")} == {d1, d2}
    assert {d.id for d in hf_api.list_datasets(filter=tag, task_categories="text-classification")} == {d1}
    assert {d.id for d in hf_api.list_datasets(filter=tag, language="de", task_categories="translation")} == {d2}
    assert {d.id for d in hf_api.list_datasets(filter=tag, size_categories="n<1K")} == {d1}
    assert {d.id for d in hf_api.list_datasets(search=d2.split("/")[1], dataset_name=d2.split("-")[-1])} == {d2}

    space = new_repo_id()
    hf_api.create_repo(space, repo_type="space", space_sdk="static")
    hf_api.upload_file(path_or_fileobj=card(sdk="static", tags=[tag]), path_in_repo="README.md", repo_id=space,
                       repo_type="space")
    assert [s.id for s in hf_api.list_spaces(filter=[tag, "static"])] == [space]

    hf_api.update_repo_settings(d2, repo_type="dataset", gated="auto")
    assert {d.id for d in hf_api.list_datasets(filter=tag, gated=True)} == {d2}
    assert {d.id for d in hf_api.list_datasets(filter=tag, gated=False)} == {d1}


def test_sort_direction_pagination_and_privacy(hf_api: HfApi, localhub: LocalHub, new_repo_id, tag: str,
                                                tmp_path: Path):
    repos = [new_repo_id() for _ in range(5)]
    for repo in repos:
        hf_api.create_repo(repo)
        hf_api.upload_file(path_or_fileobj=card(tags=[tag]), path_in_repo="README.md", repo_id=repo)
    # Likes from three users on repos[2], two on repos[0], one on repos[4].
    for user, liked in (("alice", (2, 0, 4)), ("bob", (2, 0)), ("hubflow", (2,))):
        for i in liked:
            r = httpx.post(f"{localhub.url}/api/models/{repos[i]}/like",
                           headers={"authorization": f"Bearer {localhub.token(user)}"})
            r.raise_for_status()
    by_likes = [m.id for m in hf_api.list_models(filter=tag, sort="likes")]
    assert by_likes[:3] == [repos[2], repos[0], repos[4]]
    assert [m.likes for m in hf_api.list_models(filter=tag, sort="likes", limit=3)] == [3, 2, 1]
    assert [m.id for m in hf_api.list_models(filter=tag, sort="created_at")] == repos[::-1]  # newest first
    hf_api.upload_file(path_or_fileobj=b"new", path_in_repo="x.txt", repo_id=repos[1])
    assert next(iter(hf_api.list_models(filter=tag, sort="last_modified"))).id == repos[1]
    oldest_first = httpx.get(f"{localhub.url}/api/models", params={"filter": tag, "sort": "createdAt", "direction": 1})
    assert [m["id"] for m in oldest_first.json()] == repos

    # A model's downloads count HEAD and GET requests of its config.json, as the Hub counts them: a first
    # download is a HEAD and a GET, a cached one a HEAD.
    hf_api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repos[4])
    for _ in range(2):
        hf_hub_download(repos[4], "config.json", token=localhub.token("alice"), cache_dir=tmp_path)
    top = next(iter(hf_api.list_models(filter=tag, sort="downloads")))
    assert (top.id, top.downloads) == (repos[4], 3) and hf_api.model_info(repos[4]).downloads == 3

    # Pages of 2: the answer links to the next page, and the client's paginator follows the links to the end.
    first = httpx.get(f"{localhub.url}/api/models", params={"filter": tag, "limit": 2, "sort": "createdAt"})
    assert len(first.json()) == 2 and 'rel="next"' in first.headers["link"]
    followed = [m["id"] for m in paginate(f"{localhub.url}/api/models", {"filter": tag, "limit": 2,
                                                                         "sort": "createdAt"}, {})]
    assert followed == repos[::-1]
    second = httpx.get(first.links["next"]["url"])
    third = httpx.get(second.links["next"]["url"])
    assert len(second.json()) == 2 and len(third.json()) == 1 and "link" not in third.headers

    # A private repo is listed to its namespace only.
    hf_api.update_repo_settings(repos[3], private=True)
    bob = HfApi(endpoint=localhub.url, token=localhub.token("bob"))
    assert repos[3] in {m.id for m in hf_api.list_models(filter=tag)}
    assert repos[3] not in {m.id for m in bob.list_models(filter=tag)}
    assert repos[3] not in {m.id for m in HfApi(endpoint=localhub.url, token=False).list_models(filter=tag)}
    with pytest.raises(BadRequestError, match="sort must be one of"):
        list(hf_api.list_models(sort="stars"))


def test_duplicate_repo_copies_files_with_permissions(hf_api: HfApi, localhub: LocalHub, new_repo_id, tmp_path: Path):
    src = new_repo_id()
    hf_api.create_repo(src, private=True)
    hf_api.upload_file(path_or_fileobj=card(license="mit", tags=["dup"]), path_in_repo="README.md", repo_id=src)
    hf_api.upload_file(path_or_fileobj=b"\1" * 4096, path_in_repo="w.safetensors", repo_id=src)  # an LFS file
    bob = HfApi(endpoint=localhub.url, token=localhub.token("bob"))

    with pytest.raises(RepositoryNotFoundError):  # bob cannot read the private source
        bob.duplicate_repo(src, new_repo_id("bob"))
    dst = new_repo_id()
    url = hf_api.duplicate_repo(src, dst)
    assert url.repo_id == dst
    info = hf_api.model_info(dst, files_metadata=True)
    assert info.private  # the source's visibility, unless asked otherwise
    assert {s.rfilename for s in info.siblings} == {".gitattributes", "README.md", "w.safetensors"}
    assert "license:mit" in info.tags and "dup" in info.tags
    path = hf_hub_download(dst, "w.safetensors", token=localhub.token("alice"), cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"\1" * 4096
    with pytest.raises(HfHubHTTPError) as conflict:
        hf_api.duplicate_repo(src, dst)
    assert conflict.value.response.status_code == 409
    assert hf_api.duplicate_repo(src, dst, exist_ok=True).repo_id == dst

    hf_api.update_repo_settings(src, private=False)
    with pytest.raises(HfHubHTTPError) as refused:  # bob reads the source now, but may not write alice's namespace
        bob.duplicate_repo(src, new_repo_id())
    assert refused.value.response.status_code == 403
    public_copy = bob.duplicate_repo(src, new_repo_id("bob"), private=False)
    assert not bob.model_info(public_copy.repo_id).private
    assert bob.file_exists(public_copy.repo_id, "w.safetensors")


def test_a_filtered_sorted_page_over_50k_repos_is_answered_quickly(tmp_path: Path):
    """Loose bound only (a test is not a benchmark): the index, not a scan in Python, serves the page.
    The measured figure is `python -m bench.localhub_listing` (docs/localhub.md)."""
    seed_repos(tmp_path / "hub", 50_000)
    hub = LocalHub(tmp_path / "hub", users={"u": ("t", "write")}, port=free_port()).start()
    try:
        api = HfApi(endpoint=hub.url, token=False)
        list(api.list_models(limit=1))  # a first request warms the connection
        t0 = time.perf_counter()
        page = list(api.list_models(filter=["transformers", "license:mit"], sort="likes", limit=50))
        elapsed = time.perf_counter() - t0
    finally:
        hub.stop()
    assert len(page) == 50 and all("license:mit" in m.tags for m in page)
    assert [m.likes for m in page] == sorted((m.likes for m in page), reverse=True)
    assert elapsed < 2.0, f"{elapsed:.2f}s for one page"


def test_a_data_dir_from_before_the_index_is_listed_after_restart(tmp_path: Path):
    """Upgrading localhub over an existing data dir: the repos it holds are indexed at start, likes included."""
    import sqlite3

    users = {"u": ("tok-u", "write"), "v": ("tok-v", "write")}
    hub = LocalHub(tmp_path / "hub", users=users, port=free_port()).start()
    try:
        api = HfApi(endpoint=hub.url, token="tok-u")
        for name in ("one", "two"):
            api.create_repo(f"u/{name}")
            api.upload_file(path_or_fileobj=card(license="mit", tags=["old"]), path_in_repo="README.md",
                            repo_id=f"u/{name}")
        httpx.post(f"{hub.url}/api/models/u/two/like", headers={"authorization": "Bearer tok-v"}).raise_for_status()
    finally:
        hub.stop()
    db = sqlite3.connect(tmp_path / "hub" / "hub.db")  # back to the schema of before the listing index
    for (kind, name) in db.execute("SELECT type, name FROM sqlite_master WHERE name LIKE 'listing%' OR "
                                   "name LIKE 'repo_tags%'").fetchall():
        if kind in ("table", "trigger"):
            db.execute(f"DROP {kind} IF EXISTS {name}")
    db.commit()
    db.close()

    hub = LocalHub(tmp_path / "hub", users=users, port=free_port()).start()
    try:
        listed = list(HfApi(endpoint=hub.url, token="tok-u").list_models(filter=["old", "license:mit"], sort="likes"))
    finally:
        hub.stop()
    assert [(m.id, m.likes) for m in listed] == [("u/two", 1), ("u/one", 0)]


def test_duplicate_a_space_takes_its_settings_from_the_call(hf_api: HfApi, new_repo_id):
    src = new_repo_id()
    hf_api.create_repo(src, repo_type="space", space_sdk="static", space_variables=[{"key": "MODE", "value": "src"}])
    hf_api.upload_file(path_or_fileobj=b"<h1>hi</h1>", path_in_repo="index.html", repo_id=src, repo_type="space")
    dst = hf_api.duplicate_repo(src, new_repo_id(), repo_type="space",
                                space_variables=[{"key": "MODE", "value": "copy"}]).repo_id
    assert hf_api.space_info(dst).sdk == "static"
    assert hf_api.file_exists(dst, "index.html", repo_type="space")
    assert hf_api.get_space_variables(dst)["MODE"].value == "copy"
