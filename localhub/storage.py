"""Storage for localhub: content-addressed blobs on disk, metadata in SQLite.

Crash safety: a blob is written to `tmp/`, fsynced, then renamed into `blobs/` (rename is atomic), so a killed server
never exposes a half-written blob. Metadata changes (a commit and its ref move) are one SQLite transaction in WAL
mode with synchronous=FULL, so every acknowledged commit survives `kill -9`. One lock serialises mutations: the HF
clients send 8 parallel requests, and a ref must never move between a reader's two queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from . import listing

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
HEX_RE = re.compile(r"^[0-9a-f]{7,40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REPO_TYPES = ("model", "dataset", "space")

# The Hub's default .gitattributes: the patterns that the preupload rule sends to LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n"
    for p in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
        "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
        "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.mp3 *.wav *.flac *.png *.jpg *.jpeg *.webp"
    ).split()
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS repos (
  rid INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
  private INTEGER NOT NULL DEFAULT 0, gated TEXT, created_at REAL NOT NULL, sdk TEXT, space JSON NOT NULL DEFAULT '{}',
  UNIQUE(type, namespace, name));
CREATE TABLE IF NOT EXISTS commits (
  oid TEXT PRIMARY KEY, rid INTEGER NOT NULL, parent TEXT, title TEXT, message TEXT, author TEXT, date REAL NOT NULL);
CREATE TABLE IF NOT EXISTS files (
  oid TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL, sha1 TEXT NOT NULL, size INTEGER NOT NULL,
  lfs INTEGER NOT NULL, PRIMARY KEY(oid, path));
CREATE TABLE IF NOT EXISTS refs (
  rid INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, oid TEXT NOT NULL, PRIMARY KEY(rid, kind, name));
CREATE TABLE IF NOT EXISTS webhooks (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, body JSON NOT NULL);
CREATE INDEX IF NOT EXISTS repos_nocase ON repos(type, namespace COLLATE NOCASE, name COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS redirects (
  type TEXT NOT NULL, namespace TEXT NOT NULL COLLATE NOCASE, name TEXT NOT NULL COLLATE NOCASE, rid INTEGER NOT NULL,
  PRIMARY KEY(type, namespace, name));
CREATE INDEX IF NOT EXISTS files_sha256 ON files(sha256);
CREATE TABLE IF NOT EXISTS lfs_uploads (
  sha256 TEXT NOT NULL, user TEXT NOT NULL COLLATE NOCASE, at REAL NOT NULL, PRIMARY KEY(sha256, user));
"""


class HubError(Exception):
    """An error the HTTP layer turns into the Hub's error response (status, X-Error-Code, message)."""

    def __init__(self, status: int, code: str | None, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.extra = extra or {}  # more fields for the JSON body (e.g. the 409 of create_repo carries "url")


def check_sha256(oid: str) -> str:
    """An LFS oid names a file under blobs/: anything but 64 lowercase hex would be a path traversal."""
    if not isinstance(oid, str) or not SHA256_RE.match(oid):
        raise HubError(400, None, f"Invalid LFS oid (want a sha256 in lowercase hex): {str(oid)[:80]!r}")
    return oid


def check_path(path: str) -> str:
    """A repo path as the Hub accepts it: relative, '/'-separated, no empty, '.', '..' or '.git' segment."""
    parts = path.split("/") if isinstance(path, str) else [""]
    if not path or len(path) > 1000 or "\0" in path or any(p in ("", ".", "..", ".git") for p in parts):
        raise HubError(400, None, f"Invalid path in repo: {str(path)[:200]!r}")
    if path.startswith("..\\"):
        # `..\x` is a plain name to git, the parent directory to a Windows client: the Hub refuses it at the root as
        # unprocessable (422), not malformed. Deeper (`a/..\..\x`) it takes it; clients refuse to write those.
        raise HubError(422, None, f"Invalid path in repo (it starts with '..\\'): {path[:200]!r}")
    return path


@dataclass(frozen=True)
class Repo:
    rid: int
    type: str
    namespace: str
    name: str
    private: bool
    gated: str | None
    created_at: float
    sdk: str | None
    space: dict

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    sha1: str  # git blob sha1 of the content (regular) or of the LFS pointer (lfs)
    size: int
    lfs: bool

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: float


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class Storage:
    """The data directory: `hub.db` plus `blobs/ab/<sha256>`; survives restarts.

    Only the server's user may enter it (0700; hub.db, which holds Space secrets, and secret.key are 0600): Space
    apps never see it (localhub/sandbox.py), and other local users should not either.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        _private(self.root, 0o700)
        for d in (self.blobs, self.tmp):
            d.mkdir(mode=0o700, exist_ok=True)
        for stale in self.tmp.iterdir():  # half-written uploads of a killed server
            stale.unlink(missing_ok=True)
        self.lock = threading.RLock()
        db_path = self.root / "hub.db"
        # SQLite gives its -wal and -shm files the database file's mode: create it 0600 before SQLite does.
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, 0o600))
        for path in (db_path, self.root / "hub.db-wal", self.root / "hub.db-shm"):
            if path.exists():
                _private(path, 0o600)
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.db.executescript(listing.SCHEMA)  # the index of GET /api/models etc. (localhub/listing.py)
        listing.backfill(self.db, self.read_text)

    # ---- blobs -------------------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.blobs / sha256[:2] / sha256

    def read_text(self, sha256: str) -> str:
        """A stored blob as text (a README), undecodable bytes replaced."""
        return self.blob_path(sha256).read_text(errors="replace")

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def new_tmp(self) -> tuple[Path, IO[bytes]]:
        path = self.tmp / uuid.uuid4().hex
        return path, open(path, "wb")

    def adopt_tmp(self, tmp: Path, f: IO[bytes], sha256: str) -> None:
        """fsync then rename a fully written temp file into place as blob `sha256`, and fsync the directory so the
        rename itself is durable before any commit can name the blob."""
        f.flush()
        os.fsync(f.fileno())
        f.close()
        dest = self.blob_path(sha256)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- who may name a blob -----------------------------------------------------------------------------------
    # Blobs are stored once per content (dedup is a storage detail), but knowing a sha256 is no access: a repo may
    # reference an object only if a repo its writer can read holds it, or the writer uploaded it (routes_files.py).
    def holders(self, sha256: str) -> list[Repo]:
        """The repos any commit of which holds a file with this content."""
        rows = self._rows("SELECT DISTINCT r.* FROM files f JOIN commits c ON c.oid = f.oid "
                          "JOIN repos r ON r.rid = c.rid WHERE f.sha256 = ?", (sha256,))
        return [_repo(r) for r in rows]

    def record_upload(self, sha256: str, user: str) -> None:
        """`user` PUT these bytes (the upload URL checked their sha256): they may commit them anywhere they push."""
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO lfs_uploads(sha256, user, at) VALUES (?,?,?)",
                            (sha256, user, time.time()))

    def uploaded_by(self, sha256: str, user: str) -> bool:
        return bool(self._rows("SELECT 1 FROM lfs_uploads WHERE sha256=? AND user=?", (sha256, user)))

    def put_bytes(self, data: bytes) -> tuple[str, str]:
        """Store bytes; returns (sha256, git sha1)."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha256):
            tmp, f = self.new_tmp()
            try:
                f.write(data)
                self.adopt_tmp(tmp, f, sha256)
            finally:
                _discard(tmp, f)
        return sha256, git_sha1(data)

    def put_file(self, src: Path) -> tuple[str, int]:
        """Store a local file by streaming it; returns (sha256, size)."""
        h, size = hashlib.sha256(), 0
        tmp, f = self.new_tmp()
        try:
            with open(src, "rb") as s:
                while chunk := s.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            self.adopt_tmp(tmp, f, h.hexdigest())
        finally:
            _discard(tmp, f)
        return h.hexdigest(), size

    # ---- repos -------------------------------------------------------------------------------------------------
    def _rows(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """A read on the shared connection, under the lock: never interleaved with another thread's transaction."""
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def get_repo(self, type_: str, repo_id: str) -> Repo | None:
        """The repo by id, case-insensitively as on the Hub (`Repo.id` keeps the spelling it was created with)."""
        ns, _, name = repo_id.partition("/")
        rows = self._rows("SELECT * FROM repos WHERE type=? AND namespace=? COLLATE NOCASE AND name=? COLLATE NOCASE",
                          (type_, ns, name))
        return _repo(rows[0]) if rows else None

    def redirect_for(self, type_: str, repo_id: str) -> Repo | None:
        """The repo a renamed id now points to (None if it never moved, or the repo is gone)."""
        ns, _, name = repo_id.partition("/")
        rows = self._rows("SELECT r.* FROM redirects d JOIN repos r ON r.rid = d.rid "
                          "WHERE d.type=? AND d.namespace=? AND d.name=?", (type_, ns, name))
        return _repo(rows[0]) if rows else None

    def move_repo(self, repo: Repo, new_id: str) -> Repo:
        """Rename (or transfer) a repo; the old id keeps redirecting to it. 409 if the new id is taken."""
        ns, _, name = new_id.partition("/")
        with self.lock:
            taken = self.get_repo(repo.type, new_id)
            if taken is not None and taken.rid != repo.rid:
                raise HubError(409, None, f"A {repo.type} repository called {new_id} already exists")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("UPDATE repos SET namespace=?, name=? WHERE rid=?", (ns, name, repo.rid))
                self.db.execute("DELETE FROM redirects WHERE type=? AND namespace=? AND name=?", (repo.type, ns, name))
                if repo.id.lower() != new_id.lower():
                    self.db.execute("INSERT OR REPLACE INTO redirects(type, namespace, name, rid) VALUES (?,?,?,?)",
                                    (repo.type, repo.namespace, repo.name, repo.rid))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return self.get_repo(repo.type, new_id)  # type: ignore[return-value]

    def list_repos(self, type_: str) -> list[Repo]:
        return [_repo(r) for r in self._rows("SELECT * FROM repos WHERE type=? ORDER BY namespace, name", (type_,))]

    def create_repo(
        self, type_: str, repo_id: str, private: bool, author: str, sdk: str | None = None, space: dict | None = None,
        files: dict[str, bytes] | None = None,
    ) -> Repo:
        """Create a repo with the Hub's initial commit (`.gitattributes`, plus `files`: a Space's README) on `main`;
        409 if it exists (ids compare case-insensitively)."""
        ns, _, name = repo_id.partition("/")
        with self.lock:
            if self.get_repo(type_, repo_id):
                raise HubError(409, None, f"You already created this {type_} repo: {repo_id}")
            sha256, sha1 = self.put_bytes(DEFAULT_GITATTRIBUTES.encode())
            entries = {".gitattributes": FileEntry(".gitattributes", sha256, sha1, len(DEFAULT_GITATTRIBUTES), False)}
            for path, data in (files or {}).items():
                entries[path] = FileEntry(check_path(path), *self.put_bytes(data), len(data), False)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                cur = self.db.execute(
                    "INSERT INTO repos(type, namespace, name, private, created_at, sdk, space) VALUES (?,?,?,?,?,?,?)",
                    (type_, ns, name, int(private), time.time(), sdk, json.dumps(space or {})),
                )
                self._insert_commit(cur.lastrowid, None, "initial commit", "", author, entries, "main")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return self.get_repo(type_, repo_id)  # type: ignore[return-value]

    def delete_repo(self, repo: Repo) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("DELETE FROM files WHERE oid IN (SELECT oid FROM commits WHERE rid=?)", (repo.rid,))
                self.db.execute("DELETE FROM commits WHERE rid=?", (repo.rid,))
                self.db.execute("DELETE FROM refs WHERE rid=?", (repo.rid,))
                self.db.execute("DELETE FROM redirects WHERE rid=?", (repo.rid,))
                self.db.execute("DELETE FROM repos WHERE rid=?", (repo.rid,))
                self.db.execute("COMMIT")
            except BaseException:  # an open transaction would wedge the shared connection
                self.db.execute("ROLLBACK")
                raise

    def update_repo(self, repo: Repo, **fields) -> Repo:
        with self.lock:
            for key, value in fields.items():
                if key == "space":
                    value = json.dumps(value)
                self.db.execute(f"UPDATE repos SET {key}=? WHERE rid=?", (value, repo.rid))
        return self.get_repo(repo.type, repo.id)  # type: ignore[return-value]

    # ---- refs and commits --------------------------------------------------------------------------------------
    def refs(self, repo: Repo) -> dict[str, dict[str, str]]:
        """{"branch": {name: oid}, "tag": {...}, "pr": {"1": oid}}: a pull request's ref is refs/pr/N."""
        out: dict[str, dict[str, str]] = {"branch": {}, "tag": {}, "pr": {}}
        with self.lock:
            rows = self.db.execute("SELECT kind, name, oid FROM refs WHERE rid=? ORDER BY name", (repo.rid,)).fetchall()
        for r in rows:
            out[r["kind"]][r["name"]] = r["oid"]
        return out

    def resolve(self, repo: Repo, rev: str) -> tuple[str, str | None]:
        """Revision -> (commit oid, the ref a commit would move: a branch name, or refs/pr/N; None for a tag or a
        sha). Accepts branch, tag, refs/heads/x, refs/tags/x, refs/pr/N, a full sha or a unique hex prefix."""
        refs = self.refs(repo)
        if rev.startswith("refs/pr/") and rev[8:] in refs["pr"]:
            return refs["pr"][rev[8:]], rev
        if rev.startswith("refs/heads/") and rev[11:] in refs["branch"]:
            return refs["branch"][rev[11:]], rev[11:]
        if rev.startswith("refs/tags/") and rev[10:] in refs["tag"]:
            return refs["tag"][rev[10:]], None
        if rev in refs["branch"]:
            return refs["branch"][rev], rev
        if rev in refs["tag"]:
            return refs["tag"][rev], None
        if HEX_RE.match(rev):
            rows = self._rows("SELECT oid FROM commits WHERE rid=? AND oid >= ? AND oid < ? LIMIT 2",
                              (repo.rid, rev, rev + "g"))  # a prefix range: uses the primary key, unlike LIKE
            if len(rows) == 1:
                return rows[0][0], None
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def commit_info(self, oid: str) -> Commit:
        with self.lock:
            r = self.db.execute("SELECT * FROM commits WHERE oid=?", (oid,)).fetchone()
        return Commit(r["oid"], r["parent"], r["title"], r["message"], r["author"], r["date"])

    def history(self, oid: str) -> Iterator[Commit]:
        cur: str | None = oid
        while cur:
            c = self.commit_info(cur)
            yield c
            cur = c.parent

    def tree(self, oid: str) -> dict[str, FileEntry]:
        with self.lock:
            rows = self.db.execute("SELECT path, sha256, sha1, size, lfs FROM files WHERE oid=?", (oid,)).fetchall()
        return {r["path"]: FileEntry(r["path"], r["sha256"], r["sha1"], r["size"], bool(r["lfs"])) for r in rows}

    def commit(
        self,
        repo: Repo,
        branch: str,
        title: str,
        message: str,
        author: str,
        adds: Iterable[FileEntry],
        deletes: Iterable[str],
        parent_commit: str | None = None,
    ) -> tuple[str, bool]:
        """Apply adds/deletes to the head of `branch` in one transaction. Returns (oid, created); a commit that
        changes nothing is not made (the head oid comes back with created=False)."""
        with self.lock:
            head, _ = self.resolve(repo, branch)
            if parent_commit and parent_commit != head:
                raise HubError(412, None, "The branch was updated since you opened this page. Please refresh and try "
                                          f"again. (parent commit {parent_commit} is not the head of {branch}: {head})")
            files = self.tree(head)
            before = dict(files)
            for path in deletes:
                path = path.rstrip("/")
                if path in files:
                    del files[path]
                else:
                    inside = [p for p in files if p.startswith(path + "/")]
                    if not inside:
                        raise HubError(404, "EntryNotFound", f"{path} does not exist in {repo.id}@{branch}")
                    for p in inside:
                        del files[p]
            for entry in adds:
                files[check_path(entry.path)] = entry
            if files == before:
                return head, False
            clash = set(files) & _directories(files)
            if clash:
                raise HubError(400, None, f"A path cannot be both a file and a folder: {sorted(clash)[0]}")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                oid = self._insert_commit(repo.rid, head, title, message, author, files, branch)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return oid, True

    def _insert_commit(
        self, rid: int, parent: str | None, title: str, message: str, author: str, files: dict[str, FileEntry], ref: str
    ) -> str:
        """Insert a commit and point `ref` (a branch name, or refs/pr/N) at it; the caller holds the transaction."""
        now = time.time()
        manifest = json.dumps([parent, title, message, now, uuid.uuid4().hex,
                               sorted((p, e.sha256) for p, e in files.items())])
        oid = hashlib.sha1(manifest.encode()).hexdigest()
        self.db.execute(
            "INSERT INTO commits(oid, rid, parent, title, message, author, date) VALUES (?,?,?,?,?,?,?)",
            (oid, rid, parent, title, message, author, now),
        )
        self.db.executemany(
            "INSERT INTO files(oid, path, sha256, sha1, size, lfs) VALUES (?,?,?,?,?,?)",
            [(oid, e.path, e.sha256, e.sha1, e.size, int(e.lfs)) for e in files.values()],
        )
        kind, name = ("pr", ref[8:]) if ref.startswith("refs/pr/") else ("branch", ref)
        self.db.execute("INSERT OR REPLACE INTO refs(rid, kind, name, oid) VALUES (?, ?, ?, ?)", (rid, kind, name, oid))
        if ref == "main":  # listings show `main`'s card: its tags change with this commit, in its transaction
            readme = files.get("README.md")
            listing.on_main_commit(self.db, rid, parent, readme.sha256 if readme else None, self.read_text)
        return oid

    def set_ref(self, repo: Repo, kind: str, name: str, oid: str | None) -> None:
        """Create (oid given; 409 if it exists) or delete (oid None; 404 if missing) a branch or tag."""
        with self.lock:
            exists = self.db.execute(
                "SELECT 1 FROM refs WHERE rid=? AND kind=? AND name=?", (repo.rid, kind, name)
            ).fetchone()
            if oid is not None and exists:
                raise HubError(409, None, f"Reference {_REF_PREFIX[kind]}/{name} already exists")
            if oid is None and not exists:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {name}")
            if oid is None:
                self.db.execute("DELETE FROM refs WHERE rid=? AND kind=? AND name=?", (repo.rid, kind, name))
            else:
                self.db.execute("INSERT INTO refs(rid, kind, name, oid) VALUES (?,?,?,?)", (repo.rid, kind, name, oid))

    def last_modified(self, repo: Repo) -> float:
        return self._rows("SELECT MAX(date) FROM commits WHERE rid=?", (repo.rid,))[0][0] or repo.created_at

    # ---- webhooks ----------------------------------------------------------------------------------------------
    def webhooks(self) -> list[dict]:
        return [json.loads(r[0]) for r in self._rows("SELECT body FROM webhooks ORDER BY rowid")]

    def put_webhook(self, hook: dict) -> None:
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO webhooks(id, owner, body) VALUES (?,?,?)",
                (hook["id"], hook["owner"], json.dumps(hook)),
            )

    def delete_webhook(self, hook_id: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM webhooks WHERE id=?", (hook_id,))


_REF_PREFIX = {"branch": "refs/heads", "tag": "refs/tags", "pr": "refs/pr"}


def _private(path: Path, mode: int) -> None:
    """chmod, tolerating a data dir someone else owns (the operator's choice; the server still runs)."""
    try:
        path.chmod(mode)
    except OSError as err:
        logging.getLogger("localhub").warning("cannot make %s private (mode %o): %s", path, mode, err)


def _discard(tmp: Path, f: IO[bytes]) -> None:
    """Close and remove a temp file that was not adopted (after adoption it no longer exists: a no-op)."""
    if not f.closed:
        f.close()
    tmp.unlink(missing_ok=True)


def _directories(paths: Iterable[str]) -> set[str]:
    return {p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)}


def _repo(row: sqlite3.Row) -> Repo:
    return Repo(
        row["rid"], row["type"], row["namespace"], row["name"], bool(row["private"]), row["gated"],
        row["created_at"], row["sdk"], json.loads(row["space"] or "{}"),
    )
