"""The index behind `GET /api/{models,datasets,spaces}`: tags derived from each repo's card, and sort columns.

Two tables, kept by SQLite triggers and by the commit path (storage.py), never rebuilt by a scan:
  listing(rid, type, created_at, last_modified, likes, downloads, pipeline_tag, library, tags)   one row per repo
  repo_tags(tag, rid)                                                                              one row per tag
so a filtered, sorted page is an index walk: `tag -> rids` (repo_tags' primary key) and `(type, sort column)`
(listing's indexes), whatever the number of repos (docs/localhub.md has the figure at 50,000).

Tags are the Hub's, from the README's front matter on `main`, recomputed by every commit to `main` that changes
README.md: `library_name`, `pipeline_tag`, `license` -> `license:x`, `datasets` -> `dataset:x`, `base_model` ->
`base_model:x` (and `base_model:{relation}:x`), `language` (a bare code on models and Spaces, `language:x` on
datasets, as the Hub tags them), the dataset facets (`task_categories:x`, `size_categories:x`, ...), a Space's `sdk`,
and the card's own `tags`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import yaml

SCHEMA = """
CREATE TABLE IF NOT EXISTS listing (
  rid INTEGER PRIMARY KEY, type TEXT NOT NULL, created_at REAL NOT NULL, last_modified REAL NOT NULL,
  likes INTEGER NOT NULL DEFAULT 0, downloads INTEGER NOT NULL DEFAULT 0, pipeline_tag TEXT, library TEXT,
  tags JSON NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS repo_tags (tag TEXT NOT NULL, rid INTEGER NOT NULL, PRIMARY KEY(tag, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS repo_tags_rid ON repo_tags(rid);
CREATE INDEX IF NOT EXISTS listing_likes ON listing(type, likes, rid);
CREATE INDEX IF NOT EXISTS listing_downloads ON listing(type, downloads, rid);
CREATE INDEX IF NOT EXISTS listing_modified ON listing(type, last_modified, rid);
CREATE INDEX IF NOT EXISTS listing_created ON listing(type, created_at, rid);
CREATE TRIGGER IF NOT EXISTS listing_new AFTER INSERT ON repos BEGIN
  INSERT OR REPLACE INTO listing(rid, type, created_at, last_modified) VALUES (NEW.rid, NEW.type, NEW.created_at,
  NEW.created_at); END;
CREATE TRIGGER IF NOT EXISTS listing_gone AFTER DELETE ON repos BEGIN
  DELETE FROM listing WHERE rid = OLD.rid; DELETE FROM repo_tags WHERE rid = OLD.rid; END;
CREATE TRIGGER IF NOT EXISTS listing_commit AFTER INSERT ON commits BEGIN
  UPDATE listing SET last_modified = max(last_modified, NEW.date) WHERE rid = NEW.rid; END;
"""
# The likes table belongs to localhub/likes.py, created after storage: its triggers are installed once it exists.
LIKES_SCHEMA = """
CREATE INDEX IF NOT EXISTS likes_rid ON likes(rid);
CREATE TRIGGER IF NOT EXISTS listing_like AFTER INSERT ON likes BEGIN
  UPDATE listing SET likes = likes + 1 WHERE rid = NEW.rid; END;
CREATE TRIGGER IF NOT EXISTS listing_unlike AFTER DELETE ON likes BEGIN
  UPDATE listing SET likes = likes - 1 WHERE rid = OLD.rid; END;
"""
DATASET_FACETS = ("task_categories", "task_ids", "size_categories", "multilinguality", "language_creators",
                  "annotations_creators", "source_datasets")


def _strings(value: object) -> list[str]:
    """A card field that may be a string or a list of strings (anything else is ignored, as the Hub ignores it)."""
    items = value if isinstance(value, list) else [value]
    return [str(v) for v in items if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v)]


def derive_tags(repo_type: str, card: dict) -> tuple[list[str], str | None, str | None]:
    """(tags, pipeline_tag, library_name) of a card's metadata, in the Hub's order (library, pipeline, card tags...)."""
    library = card.get("library_name") if isinstance(card.get("library_name"), str) else None
    pipeline = card.get("pipeline_tag") if isinstance(card.get("pipeline_tag"), str) else None
    tags: list[str] = [t for t in (library, pipeline) if t]
    if repo_type == "space":
        tags += _strings(card.get("sdk"))
    tags += _strings(card.get("tags"))
    if repo_type == "dataset":
        for facet in DATASET_FACETS:
            tags += [f"{facet}:{v}" for v in _strings(card.get(facet))]
        tags += [f"language:{v}" for v in _strings(card.get("language"))]
    else:
        tags += _strings(card.get("language"))
    tags += [f"dataset:{v}" for v in _strings(card.get("datasets"))]
    relation = card.get("base_model_relation") if isinstance(card.get("base_model_relation"), str) else None
    for base in _strings(card.get("base_model")):
        tags += [f"base_model:{base}"] + ([f"base_model:{relation}:{base}"] if relation else [])
    tags += [f"license:{v}" for v in _strings(card.get("license"))]
    return list(dict.fromkeys(tags)), pipeline, library  # dedup, order kept


def parse_card(text: str) -> dict:
    """The README's front matter as a dict ({} when there is none or it does not parse)."""
    text = text.lstrip("\ufeff \t\r\n").replace("\r\n", "\n")
    if not text.startswith("---\n") or (end := text.find("\n---", 4)) < 0:
        return {}
    try:
        data = yaml.safe_load(text[4:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def set_card(db: sqlite3.Connection, rid: int, repo_type: str, readme: str | None) -> None:
    """Re-derive a repo's tags from its README on `main` (None: no README); the caller holds the transaction."""
    tags, pipeline, library = derive_tags(repo_type, parse_card(readme) if readme else {})
    db.execute("UPDATE listing SET tags=?, pipeline_tag=?, library=? WHERE rid=?",
               (json.dumps(tags), pipeline, library, rid))
    db.execute("DELETE FROM repo_tags WHERE rid=?", (rid,))
    db.executemany("INSERT OR IGNORE INTO repo_tags(tag, rid) VALUES (?,?)", [(t, rid) for t in tags])


def on_main_commit(db: sqlite3.Connection, rid: int, parent: str | None, readme_sha256: str | None,
                   read_blob: Callable[[str], str]) -> None:
    """A commit moved `main`: re-derive the tags when README.md changed (added, edited or deleted)."""
    before = db.execute("SELECT sha256 FROM files WHERE oid=? AND path='README.md'", (parent,)).fetchone()
    if parent is not None and (before[0] if before else None) == readme_sha256:
        return
    row = db.execute("SELECT type FROM repos WHERE rid=?", (rid,)).fetchone()
    set_card(db, rid, row[0], read_blob(readme_sha256) if readme_sha256 else None)


def backfill(db: sqlite3.Connection, read_blob: Callable[[str], str]) -> None:
    """Index the repos of a data dir written before the listing existed (a no-op once every repo has its row)."""
    missing = db.execute("SELECT r.rid, r.type, r.created_at FROM repos r LEFT JOIN listing l ON l.rid = r.rid "
                         "WHERE l.rid IS NULL").fetchall()
    if not missing:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for rid, type_, created in missing:
            modified = db.execute("SELECT MAX(date) FROM commits WHERE rid=?", (rid,)).fetchone()[0] or created
            db.execute("INSERT INTO listing(rid, type, created_at, last_modified) VALUES (?,?,?,?)",
                       (rid, type_, created, modified))
            readme = db.execute("SELECT f.sha256 FROM refs r JOIN files f ON f.oid = r.oid WHERE r.rid=? AND "
                                "r.kind='branch' AND r.name='main' AND f.path='README.md'", (rid,)).fetchone()
            set_card(db, rid, type_, read_blob(readme[0]) if readme else None)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def install_likes(db: sqlite3.Connection) -> None:
    """The like counters' triggers, once localhub/likes.py has made its table; counts recomputed once."""
    fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type='trigger' AND name='listing_like'").fetchone() is None
    db.executescript(LIKES_SCHEMA)
    if fresh:
        db.execute("UPDATE listing SET likes = (SELECT COUNT(*) FROM likes WHERE likes.rid = listing.rid)")


def count_download(storage, repo, path: str) -> None:
    """One download of a model per HEAD or GET of its `config.json`, the Hub's documented rule for models (so a
    first `hf_hub_download` counts 2, a cached one 1). Other files and types count nothing: each count is a write."""
    if repo.type == "model" and path == "config.json":
        with storage.lock:
            storage.db.execute("UPDATE listing SET downloads = downloads + 1 WHERE rid=?", (repo.rid,))


def downloads(storage, repo) -> int:
    rows = storage._rows("SELECT downloads FROM listing WHERE rid=?", (repo.rid,))
    return rows[0][0] if rows else 0
