"""`--seed TYPE:NAMESPACE/NAME=FOLDER`: publish local folders as public repos, straight into storage.

Idempotent (a repo that exists is left as it is); no HTTP, no token needed. The caller decides what to seed: the
hubflow demo hands over all-MiniLM-L6-v2's folder and its generated dataset, so localhub imports nothing of hubflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .routes_files import LFS_THRESHOLD, _is_lfs_path
from .storage import DEFAULT_GITATTRIBUTES, FileEntry, Storage, git_sha1, lfs_pointer

log = logging.getLogger("localhub")
REPO_TYPES = ("model", "dataset", "space")


def parse_seed(spec: str) -> tuple[str, str, Path]:
    """`dataset:ns/name=/path` -> ("dataset", "ns/name", Path("/path")); ValueError names what is wrong."""
    target, sep, folder = spec.partition("=")
    type_, _, repo_id = target.partition(":")
    if not sep or type_ not in REPO_TYPES or repo_id.count("/") != 1 or not Path(folder).is_dir():
        raise ValueError(f"--seed {spec!r}: expected TYPE:NAMESPACE/NAME=FOLDER with TYPE in {REPO_TYPES} and an "
                         "existing folder")
    return type_, repo_id, Path(folder)


def seed_hub(storage: Storage, specs: list[str]) -> None:
    for type_, repo_id, folder in map(parse_seed, specs):
        if storage.get_repo(type_, repo_id) is None:
            publish_folder(storage, type_, repo_id, folder, f"Add {repo_id.split('/')[-1]}")


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
