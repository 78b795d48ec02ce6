"""Collections, as `HfApi`'s collection methods use them (routes and JSON shapes read from huggingface_hub 2.4).

    GET    /api/collections?owner=&item=models/ns/name&sort=lastModified|trending|upvotes&limit=   list_collections
    POST   /api/collections {title, namespace, private, description?}                       create_collection
    GET    /api/collections/{ns}/{slug}                                                     get_collection
    PATCH  /api/collections/{ns}/{slug} {title?, description?, position?, private?, theme?} update_collection_metadata
    DELETE /api/collections/{ns}/{slug}                                                     delete_collection
    POST   /api/collections/{ns}/{slug}/items {item: {id, type}, note?}                     add_collection_item
    PATCH  /api/collections/{ns}/{slug}/items/{item_id} {note?, position?}                  update_collection_item
    DELETE /api/collections/{ns}/{slug}/items/{item_id}                                     delete_collection_item

A slug is `{owner}/{slugified title}-{24 hex id}`; the id alone names the collection, so a renamed collection's old
slug keeps working, as on the Hub. A private collection is seen by its namespace's members only (anyone else gets
404); changes need write access to the namespace. Items are repos (model, dataset, space: stored by repo, so a moved
repo stays in, a deleted one drops out, one the caller cannot read is not shown) and other collections.
"""

from __future__ import annotations

import re
import secrets
import time

from starlette.responses import JSONResponse, Response

from .http import (
    Ctx,
    HubError,
    Moved,
    Router,
    can_read,
    canonical_namespace,
    check_write,
    field,
    iso,
    namespace_role,
    repo_for_read,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL COLLATE NOCASE, title TEXT NOT NULL, description TEXT,
  private INTEGER NOT NULL, theme TEXT NOT NULL, position INTEGER NOT NULL, updated REAL NOT NULL,
  upvotes INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS collections_owner ON collections(owner);
CREATE TABLE IF NOT EXISTS collection_items (
  id TEXT PRIMARY KEY, cid TEXT NOT NULL, type TEXT NOT NULL, target TEXT NOT NULL, position INTEGER NOT NULL,
  note TEXT, UNIQUE(cid, type, target));
CREATE INDEX IF NOT EXISTS collection_items_target ON collection_items(type, target);
"""
REPO_TYPES = ("model", "dataset", "space")
THEMES = ("default", "orange", "blue", "green", "purple", "pink", "indigo")
LIST_MAX = 100


def _slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80] or "collection"


class Collections:
    def __init__(self, hub):
        self.hub, self.storage = hub, hub.storage
        with self.storage.lock:
            self.storage.db.executescript(SCHEMA)
        self.router = Router()
        base = "/api/collections/{ns}/{slug}"
        self.router.add("GET", "/api/collections")(self._list)
        self.router.add("POST", "/api/collections")(self._create)
        self.router.add("GET,PATCH,DELETE", base)(self._one)
        self.router.add("POST", f"{base}/items")(self._add_item)
        self.router.add("PATCH,DELETE", f"{base}/items/{{item}}")(self._item)

    # ---- reading -------------------------------------------------------------------------------------------------
    def _row(self, ctx: Ctx, write: bool = False):
        """The collection the path names, if the caller may see it (and, with `write`, change it); else 404/403."""
        cid = ctx.params["slug"].rsplit("-", 1)[-1]
        rows = self.storage._rows("SELECT * FROM collections WHERE id=? AND owner=?", (cid, ctx.params["ns"]))
        if not rows or (rows[0]["private"] and namespace_role(ctx, rows[0]["owner"]) is None):
            raise HubError(404, None, "Collection not found")
        if write:
            check_write(ctx, rows[0]["owner"])
        return rows[0]

    def _owner(self, name: str) -> dict:
        org = self.hub.teams.org(name)
        return {"_id": name, "name": name, "type": "org" if org else "user", "avatarUrl": "",
                "fullname": org["fullname"] if org else self.hub.teams.fullname(name), "isHf": False}

    def _item_json(self, ctx: Ctx, item) -> dict | None:
        out = {"_id": item["id"], "position": item["position"], "type": item["type"],
               "note": {"text": item["note"], "html": item["note"]} if item["note"] else None}
        if item["type"] == "collection":
            rows = self.storage._rows("SELECT * FROM collections WHERE id=?", (item["target"],))
            if not rows or (rows[0]["private"] and namespace_role(ctx, rows[0]["owner"]) is None):
                return None
            return {**out, "id": rows[0]["id"], "slug": self._slug(rows[0]), "title": rows[0]["title"]}
        rows = self.storage._rows("SELECT type, namespace, name FROM repos WHERE rid=?", (int(item["target"]),))
        repo = self.storage.get_repo(rows[0][0], f"{rows[0][1]}/{rows[0][2]}") if rows else None
        if repo is None or not can_read(ctx, repo):
            return None
        return {**out, "id": repo.id, "author": repo.namespace, "private": repo.private,
                "repoType": repo.type, "likes": self.hub.likes.count(repo)}

    @staticmethod
    def _slug(row) -> str:
        return f"{row['owner']}/{_slugify(row['title'])}-{row['id']}"

    def _json(self, ctx: Ctx, row, max_items: int | None = None) -> dict:
        items = self.storage._rows("SELECT * FROM collection_items WHERE cid=? ORDER BY position", (row["id"],))
        shown = [j for j in (self._item_json(ctx, i) for i in items) if j is not None][:max_items]
        return {"id": row["id"], "slug": self._slug(row), "title": row["title"], "description": row["description"],
                "owner": self._owner(row["owner"]), "items": shown, "lastUpdated": iso(row["updated"]),
                "position": row["position"], "private": bool(row["private"]), "theme": row["theme"],
                "upvotes": row["upvotes"], "isUpvotedByUser": False, "gating": False,
                "shareUrl": f"{ctx.base_url}/collections/{self._slug(row)}"}

    async def _list(self, ctx: Ctx) -> Response:
        q = ctx.request.query_params
        where, args = [], []
        owners = q.getlist("owner")
        if owners:
            where.append(f"owner IN ({','.join('?' * len(owners))})")
            args += owners
        for item in q.getlist("item"):  # `models/ns/name`: collections holding that repo
            kind, _, repo_id = item.partition("s/")
            repo = self.storage.get_repo(kind, repo_id) if kind in REPO_TYPES else None
            where.append("id IN (SELECT cid FROM collection_items WHERE type=? AND target=?)")
            args += [kind, str(repo.rid) if repo else ""]
        order = {"upvotes": "upvotes DESC", "trending": "upvotes DESC"}.get(q.get("sort") or "", "updated DESC")
        rows = self.storage._rows(f"SELECT * FROM collections {'WHERE ' + ' AND '.join(where) if where else ''} "
                                  f"ORDER BY {order}, id", tuple(args))
        visible = [r for r in rows if not r["private"] or namespace_role(ctx, r["owner"]) is not None]
        limit = min(int(q.get("limit") or LIST_MAX), LIST_MAX) if (q.get("limit") or "").isdigit() else LIST_MAX
        # As the Hub lists them: 4 items each, and no `position` (the client numbers the list itself).
        listed = [{k: v for k, v in self._json(ctx, r, 4).items() if k != "position"} for r in visible[:limit]]
        return JSONResponse(listed)

    # ---- changes -------------------------------------------------------------------------------------------------
    def _touch(self, cid: str) -> None:
        self.storage.db.execute("UPDATE collections SET updated=? WHERE id=?", (time.time(), cid))

    async def _create(self, ctx: Ctx) -> Response:
        body = await ctx.json()
        title = (field(body, "title", str) or "").strip()
        if not title:
            raise HubError(400, None, "A collection needs a title")
        namespace = field(body, "namespace", str) or (ctx.user.name if ctx.user else "")
        check_write(ctx, namespace)
        namespace = canonical_namespace(ctx, namespace)
        with self.storage.lock:
            same = self.storage.db.execute("SELECT * FROM collections WHERE owner=? AND title=?",
                                           (namespace, title)).fetchone()
            if same is not None:  # `create_collection(exists_ok=True)` reads the slug from the 409
                raise HubError(409, None, f"A collection titled {title!r} already exists", {"slug": self._slug(same)})
            count = self.storage.db.execute("SELECT COUNT(*) FROM collections WHERE owner=?", (namespace,)).fetchone()
            cid = secrets.token_hex(12)
            self.storage.db.execute(
                "INSERT INTO collections(id, owner, title, description, private, theme, position, updated) "
                "VALUES (?,?,?,?,?,?,?,?)", (cid, namespace, title, field(body, "description", str),
                                             int(bool(field(body, "private", bool))), "default", count[0], time.time()))
            row = self.storage.db.execute("SELECT * FROM collections WHERE id=?", (cid,)).fetchone()
        return JSONResponse(self._json(ctx, row))

    async def _one(self, ctx: Ctx) -> Response:
        method = ctx.request.method
        row = self._row(ctx, write=method != "GET")
        if method == "GET":
            return JSONResponse(self._json(ctx, row))
        body = await ctx.json() if method == "PATCH" else {}  # read before the lock: never hold it across an await
        with self.storage.lock:
            if method == "DELETE":
                self.storage.db.execute("DELETE FROM collection_items WHERE cid=? OR (type='collection' AND target=?)",
                                        (row["id"], row["id"]))
                self.storage.db.execute("DELETE FROM collections WHERE id=?", (row["id"],))
                return JSONResponse({})
            changes = {"title": field(body, "title", str), "description": field(body, "description", str),
                       "position": field(body, "position", int), "private": field(body, "private", bool),
                       "theme": field(body, "theme", str)}
            if changes["theme"] is not None and changes["theme"] not in THEMES:
                raise HubError(400, None, f"theme must be one of {', '.join(THEMES)}")
            for key, value in changes.items():
                if value is not None:
                    self.storage.db.execute(f"UPDATE collections SET {key}=? WHERE id=?", (value, row["id"]))
            self._touch(row["id"])
            row = self.storage.db.execute("SELECT * FROM collections WHERE id=?", (row["id"],)).fetchone()
        return JSONResponse({"success": True, "data": self._json(ctx, row)})

    def _target(self, ctx: Ctx, kind: str, item_id: str) -> str:
        """What an item refers to (a repo's rid, a collection's id), if the caller can see it; else 404."""
        if kind == "collection":
            ns, _, slug = item_id.partition("/")
            return self._row(Ctx(ctx.request, ctx.hub, ctx.user, {"ns": ns, "slug": slug}))["id"]
        if kind not in REPO_TYPES:
            raise HubError(400, None, f"item type must be one of {', '.join(REPO_TYPES)}, collection (localhub has no "
                                      f"{kind[:20]}s)")
        try:
            return str(repo_for_read(ctx, kind, item_id).rid)
        except Moved as moved:
            return str(repo_for_read(ctx, kind, moved.new_id).rid)

    async def _add_item(self, ctx: Ctx) -> Response:
        row = self._row(ctx, write=True)
        body = await ctx.json()
        item = field(body, "item", dict) or {}
        kind, item_id = field(item, "type", str) or "", field(item, "id", str) or ""
        target = self._target(ctx, kind, item_id)
        with self.storage.lock:
            if self.storage.db.execute("SELECT 1 FROM collection_items WHERE cid=? AND type=? AND target=?",
                                       (row["id"], kind, target)).fetchone():
                raise HubError(409, None, f"{kind} {item_id} is already in this collection")
            count = self.storage.db.execute("SELECT COUNT(*) FROM collection_items WHERE cid=?",
                                            (row["id"],)).fetchone()
            self.storage.db.execute("INSERT INTO collection_items(id, cid, type, target, position, note) "
                                    "VALUES (?,?,?,?,?,?)", (secrets.token_hex(12), row["id"], kind, target, count[0],
                                                             field(body, "note", str)))
            self._touch(row["id"])
        return JSONResponse(self._json(ctx, row))

    async def _item(self, ctx: Ctx) -> Response:
        row = self._row(ctx, write=True)
        body = await ctx.json() if ctx.request.method == "PATCH" else {}
        item_id = ctx.params["item"]
        with self.storage.lock:
            items = [r["id"] for r in self.storage.db.execute(
                "SELECT id FROM collection_items WHERE cid=? ORDER BY position", (row["id"],))]
            if item_id not in items:
                raise HubError(404, None, "Item not found in this collection")
            index = items.index(item_id)
            items.remove(item_id)
            if ctx.request.method == "PATCH":
                position = field(body, "position", int)
                items.insert(index if position is None else max(0, position), item_id)
                if (note := field(body, "note", str)) is not None:
                    self.storage.db.execute("UPDATE collection_items SET note=? WHERE id=?", (note, item_id))
            else:
                self.storage.db.execute("DELETE FROM collection_items WHERE id=?", (item_id,))
            # Positions stay 0..n-1 in order: a moved item shifts the others, a deleted one closes the gap.
            self.storage.db.executemany("UPDATE collection_items SET position=? WHERE id=?", list(enumerate(items)))
            self._touch(row["id"])
        return JSONResponse({"success": True})
