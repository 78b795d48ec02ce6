"""Operations over a repo's commit history: last commit per path (`expand`), super-squash, the LFS files listing
and their permanent deletion.

History is linear (every commit has at most one parent), so a walk from a ref's head visits each commit once, and
two refs share everything below their first common commit.
"""

from __future__ import annotations

import logging
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


def purge_lfs(storage: Storage, repo: Repo, shas: list[str]) -> int:
    """Remove LFS objects from every commit of the repo (history is rewritten in place), then delete each blob no
    other commit of any repo still names. Returns the number of file entries removed."""
    if not shas:
        return 0
    marks = ",".join("?" * len(shas))
    with storage.lock:
        storage.db.execute("BEGIN IMMEDIATE")
        try:
            cur = storage.db.execute(
                f"DELETE FROM files WHERE lfs=1 AND sha256 IN ({marks}) "
                "AND oid IN (SELECT oid FROM commits WHERE rid=?)", (*shas, repo.rid))
            storage.db.execute("COMMIT")
        except BaseException:
            storage.db.execute("ROLLBACK")
            raise
        for sha in shas:
            if not storage.db.execute("SELECT 1 FROM files WHERE sha256=? LIMIT 1", (sha,)).fetchone():
                storage.blob_path(sha).unlink(missing_ok=True)
    log.info("purged %d LFS object(s) from %s %s", len(shas), repo.type, repo.id)
    return cur.rowcount
