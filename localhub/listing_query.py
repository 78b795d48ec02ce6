"""One page of `GET /api/{models,datasets,spaces}` as the Hub answers it, from the index in localhub/listing.py.

The query parameters are what `HfApi.list_models/list_datasets/list_spaces` send: `filter` (repeated: every tag must
be on the repo; the dataset facets arrive as `task_categories:x` tags), `author`, `search` (repeated: each a
case-insensitive substring of the id), `pipeline_tag`, `library`, `gated`, `sort` (`likes`, `downloads`,
`lastModified`, `createdAt`, `trendingScore`; snake_case accepted too) with `direction` (-1, the default, is
descending), `limit` and `cursor`. A page is at most `limit` (1000 by default) items; when more match, the answer
carries `Link: <...&cursor=...>; rel="next"`, which the client follows (GitHub-style, as on the Hub).

`downloads` counts HEAD/GET requests of a model's config.json (localhub/listing.py); localhub has no trending
signal, so `trendingScore` is the like count.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from urllib.parse import urlencode

from .http import iso
from .storage import HubError

SORT_COLUMNS = {"likes": "likes", "downloads": "downloads", "lastModified": "last_modified",
                "last_modified": "last_modified", "createdAt": "created_at", "created_at": "created_at",
                "trendingScore": "likes", "trending_score": "likes", "likes7d": "likes"}
PAGE_MAX = 1000


@dataclass
class Query:
    type: str
    tags: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    author: str | None = None
    pipeline_tag: str | None = None
    library: str | None = None
    gated: bool | None = None
    sort: str | None = None  # a listing column
    descending: bool = True
    limit: int = PAGE_MAX
    offset: int = 0


def _int(params, key: str, default: int) -> int:
    value = params.get(key)
    try:
        return default if value in (None, "") else int(value)
    except ValueError:
        raise HubError(400, None, f"{key} must be an integer, got {value[:50]!r}") from None


def parse(params, type_: str) -> Query:
    """The query string (a starlette QueryParams) -> Query; a malformed value is a 400 that names it."""
    q = Query(type_, tags=[t for t in params.getlist("filter") if t], search=[s for s in params.getlist("search") if s])
    q.author, q.pipeline_tag, q.library = params.get("author"), params.get("pipeline_tag"), params.get("library")
    if params.get("gated") not in (None, ""):
        q.gated = params["gated"].lower() in ("1", "true")
    sort = params.get("sort")
    if sort:
        if sort not in SORT_COLUMNS:
            raise HubError(400, None, f"sort must be one of {', '.join(sorted(SORT_COLUMNS))}, not {sort[:50]!r}")
        q.sort = SORT_COLUMNS[sort]
    q.descending = _int(params, "direction", -1) < 0
    q.limit = min(max(_int(params, "limit", PAGE_MAX), 1), PAGE_MAX)
    cursor = params.get("cursor")
    if cursor:
        try:
            q.offset = int(json.loads(base64.urlsafe_b64decode(cursor.encode()))["offset"])
        except (ValueError, KeyError, TypeError):
            raise HubError(400, None, "Invalid cursor") from None
    return q


def page(db: sqlite3.Connection, q: Query, readable: list[str]) -> tuple[list[sqlite3.Row], bool]:
    """(rows, more) for the query, private repos shown only in the `readable` namespaces (lowercase)."""
    where, args = ["l.type = ?"], [q.type]
    marks = ",".join("?" * len(readable))
    where.append(f"(r.private = 0 OR lower(r.namespace) IN ({marks}))" if readable else "r.private = 0")
    args += readable
    for tag in q.tags:  # AND of tags: each one an index lookup on repo_tags' primary key
        where.append("l.rid IN (SELECT rid FROM repo_tags WHERE tag = ?)")
        args.append(tag)
    if q.author:
        where.append("r.namespace = ? COLLATE NOCASE")
        args.append(q.author)
    for s in q.search:
        where.append("(r.namespace || '/' || r.name) LIKE ? ESCAPE '\\'")
        args.append("%" + s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    if q.pipeline_tag:
        where.append("l.pipeline_tag = ?")
        args.append(q.pipeline_tag)
    if q.library:
        where.append("l.rid IN (SELECT rid FROM repo_tags WHERE tag = ?)")  # the library is one of the tags
        args.append(q.library)
    if q.gated is not None:
        where.append("r.gated IS NOT NULL" if q.gated else "r.gated IS NULL")
    direction = "DESC" if q.descending else "ASC"
    order = f"l.{q.sort} {direction}, l.rid {direction}" if q.sort else "l.rid ASC"  # default: creation order
    sql = (f"SELECT l.*, r.namespace, r.name, r.private, r.gated, r.sdk, (SELECT oid FROM refs WHERE rid = l.rid "
           f"AND kind = 'branch' AND name = 'main') AS sha FROM listing l JOIN repos r ON r.rid = l.rid "
           f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ? OFFSET ?")
    rows = db.execute(sql, (*args, q.limit + 1, q.offset)).fetchall()
    return rows[:q.limit], len(rows) > q.limit


def next_link(url: str, params, q: Query) -> str:
    """The `Link` header of a page that has a next one."""
    cursor = base64.urlsafe_b64encode(json.dumps({"offset": q.offset + q.limit}).encode()).decode()
    items = [(k, v) for k, v in params.multi_items() if k != "cursor"] + [("cursor", cursor)]
    return f'<{url}?{urlencode(items)}>; rel="next"'


def compact(row: sqlite3.Row) -> dict:
    """A listed repo in the Hub's default (non-`full`) shape: no siblings, no card."""
    repo_id = f"{row['namespace']}/{row['name']}"
    item = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": row["namespace"],
            "sha": row["sha"], "private": bool(row["private"]), "gated": row["gated"] or False, "disabled": False,
            "likes": row["likes"], "downloads": row["downloads"], "trendingScore": row["likes"],
            "tags": json.loads(row["tags"]), "createdAt": iso(row["created_at"]),
            "lastModified": iso(row["last_modified"])}
    if row["type"] == "model":
        item.update(modelId=repo_id, pipeline_tag=row["pipeline_tag"], library_name=row["library"])
    elif row["type"] == "space":
        item["sdk"] = row["sdk"]
    return item
