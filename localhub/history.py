"""Operations over a repo's commit history: last commit per path (`expand`), super-squash, the LFS files listing
and their permanent deletion.

History is linear (every commit has at most one parent), so a walk from a ref's head visits each commit once, and
two refs share everything below their first common commit.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from .storage import Commit, FileEntry, Repo, Storage

log = logging.getLogger("localhub")
MAX_WALK = 5000  # commits looked at for `lastCommit`; older paths get the oldest commit seen


def _signature(files: dict[str, FileEntry], path: str) -> tuple:
    """What a path is at one commit: its blob for a file, the (path, blob) list for a folder, () when absent."""
    entry = files.get(path)
    if entry is not None:
        return ((path, entry.sha256, entry.lfs),)
    prefix = path + "/"
    return tuple(sorted((p, e.sha256, e.lfs) for p, e in files.items() if p.startswith(prefix)))


def last_commits(storage: Storage, head: str, paths: Iterable[str]) -> dict[str, Commit]:
    """For each path (file or folder) at `head`, the newest commit that changed it: the Hub's `lastCommit`."""
    todo = set(paths)
    found: dict[str, Commit] = {}
    commit = storage.commit_info(head)
    files = storage.tree(head)
    for _ in range(MAX_WALK):
        if not todo:
            break
        parent_files = storage.tree(commit.parent) if commit.parent else {}
        for path in list(todo):
            if not commit.parent or _signature(files, path) != _signature(parent_files, path):
                found[path] = commit
                todo.discard(path)
        if not commit.parent:
            break
        commit, files = storage.commit_info(commit.parent), parent_files
    for path in todo:  # beyond MAX_WALK: the oldest commit looked at is the best answer there is
        found[path] = commit
    return found


def squash(storage: Storage, repo: Repo, ref: str, title: str, author: str) -> str:
    """Replace `ref`'s history by one commit with its current files (the Hub's super-squash); returns its oid."""
    with storage.lock:
        head, _ = storage.resolve(repo, ref)
        files = storage.tree(head)
        storage.db.execute("BEGIN IMMEDIATE")
        try:
            oid = storage._insert_commit(repo.rid, None, title, "", author, files, ref)
            storage.db.execute("COMMIT")
        except BaseException:
            storage.db.execute("ROLLBACK")
            raise
    return oid


def lfs_files(storage: Storage, repo: Repo) -> list[dict]:
    """Every LFS object any ref of the repo reaches, once, with the path and date it was first pushed at and the
    first ref (main, other branches, then PRs) that reaches it."""
    refs = storage.refs(repo)
    order = sorted(refs["branch"].items(), key=lambda kv: kv[0] != "main")
    heads = [(f"refs/heads/{b}", o) for b, o in order] + [(f"refs/pr/{n}", o) for n, o in refs["pr"].items()]
    seen: set[str] = set()
    out: dict[str, dict] = {}
    for ref, head in heads:
        for commit in storage.history(head):
            if commit.oid in seen:
                break  # everything below was walked from an earlier ref
            seen.add(commit.oid)
            for entry in storage.tree(commit.oid).values():
                if not entry.lfs:
                    continue
                item = out.setdefault(entry.sha256, {"fileOid": entry.sha256, "oid": entry.sha256, "size": entry.size,
                                                     "ref": ref, "filename": entry.path, "pushedAt": commit.date})
                if commit.date <= item["pushedAt"]:  # walking backwards: keep the oldest sighting's path
                    item.update(filename=entry.path, pushedAt=commit.date)
    return sorted(out.values(), key=lambda i: i["pushedAt"])


# Which repo's LFS batch endpoint an object was uploaded through (the signed upload URL names the repo): with the
# repo's history, what makes an object that repo's own, to purge. Blobs are shared by content across repos and users.
_UPLOADS_DDL = ("CREATE TABLE IF NOT EXISTS lfs_repo_uploads (sha256 TEXT NOT NULL, rid INTEGER NOT NULL, "
                "at REAL NOT NULL, PRIMARY KEY(sha256, rid))")


def _ready(storage: Storage) -> None:
    if not getattr(storage, "lfs_repo_uploads_ready", False):
        storage.db.execute(_UPLOADS_DDL)
        storage.lfs_repo_uploads_ready = True


def record_repo_upload(storage: Storage, rid: int, sha256: str) -> None:
    """The bytes of `sha256` went through repo `rid`'s LFS batch endpoint (PUT, or granted as already stored)."""
    with storage.lock:
        _ready(storage)
        storage.db.execute("INSERT OR REPLACE INTO lfs_repo_uploads(sha256, rid, at) VALUES (?,?,?)",
                           (sha256, rid, time.time()))


def uploaded_through(storage: Storage, rid: int, sha256: str) -> bool:
    with storage.lock:
        _ready(storage)
        return bool(storage.db.execute("SELECT 1 FROM lfs_repo_uploads WHERE rid=? AND sha256=?",
                                       (rid, sha256)).fetchone())


def _own(storage: Storage, repo: Repo, shas: list[str]) -> list[str]:
    """The objects among `shas` that are `repo`'s: named by a commit of its history, or uploaded through it."""
    marks = ",".join("?" * len(shas))
    named = storage.db.execute(
        f"SELECT DISTINCT f.sha256 FROM files f JOIN commits c ON c.oid = f.oid WHERE c.rid=? AND f.lfs=1 "
        f"AND f.sha256 IN ({marks})", (repo.rid, *shas)).fetchall()
    uploaded = storage.db.execute(f"SELECT sha256 FROM lfs_repo_uploads WHERE rid=? AND sha256 IN ({marks})",
                                  (repo.rid, *shas)).fetchall()
    return sorted({row[0] for row in named} | {row[0] for row in uploaded})


def purge_lfs(storage: Storage, repo: Repo, shas: list[str]) -> int:
    """Remove the repo's own LFS objects among `shas` from every commit of the repo (history is rewritten in
    place), forget their uploads through it, then delete each blob that no commit of any repo names and no other
    repo's upload holds. Objects that are not the repo's are left alone: a sha256 is no key to someone else's
    upload. Returns the number of file entries removed."""
    if not shas:
        return 0
    with storage.lock:
        _ready(storage)
        own = _own(storage, repo, shas)
        if not own:
            return 0
        marks = ",".join("?" * len(own))
        storage.db.execute("BEGIN IMMEDIATE")
        try:
            cur = storage.db.execute(
                f"DELETE FROM files WHERE lfs=1 AND sha256 IN ({marks}) "
                "AND oid IN (SELECT oid FROM commits WHERE rid=?)", (*own, repo.rid))
            storage.db.execute(f"DELETE FROM lfs_repo_uploads WHERE rid=? AND sha256 IN ({marks})", (repo.rid, *own))
            storage.db.execute("COMMIT")
        except BaseException:
            storage.db.execute("ROLLBACK")
            raise
        for sha in own:
            named = storage.db.execute("SELECT 1 FROM files WHERE sha256=? LIMIT 1", (sha,)).fetchone()
            held = storage.db.execute("SELECT 1 FROM lfs_repo_uploads WHERE sha256=? LIMIT 1", (sha,)).fetchone()
            if not named and not held:
                storage.blob_path(sha).unlink(missing_ok=True)
    log.info("purged %d LFS object(s) from %s %s", len(own), repo.type, repo.id)
    return cur.rowcount
