"""Likes, as on the Hub: a signed-in user likes a repo they can read; the lists show only repos the caller can read.

    POST|DELETE /api/{t}s/{ns}/{name}/like        (HfApi.unlike; the Hub's web UI likes)
    GET  /api/{t}s/{ns}/{name}/likers             [{user, fullname, avatarUrl, type}]
    GET  /api/users/{user}/likes                  [{createdAt, repo: {name, type}}]   (HfApi.list_liked_repos)
"""

from __future__ import annotations

import time

from starlette.responses import JSONResponse, Response

from .http import TYPE_OF_PLURAL, Ctx, HubError, Router, can_read, iso, repo_for_read
from .storage import Repo, Storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS likes (
  user TEXT NOT NULL COLLATE NOCASE, rid INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY(user, rid));
"""
T = "{t:models|datasets|spaces}"


class Likes:
    def __init__(self, hub):
        self.hub, self.storage = hub, hub.storage
        with self.storage.lock:
            self.storage.db.executescript(SCHEMA)
        self.router = Router()
        self.router.add("POST,DELETE", f"/api/{T}/{{ns}}/{{name}}/like")(self._like)
        self.router.add("GET", f"/api/{T}/{{ns}}/{{name}}/likers")(self._likers)
        self.router.add("GET", "/api/users/{user}/likes")(self._likes)

    def count(self, repo: Repo) -> int:
        return self.storage._rows("SELECT COUNT(*) FROM likes WHERE rid=?", (repo.rid,))[0][0]

    def forget(self, repo: Repo) -> None:
        with self.storage.lock:
            self.storage.db.execute("DELETE FROM likes WHERE rid=?", (repo.rid,))

    def _repo(self, ctx: Ctx) -> Repo:
        return repo_for_read(ctx, TYPE_OF_PLURAL[ctx.params["t"]], f"{ctx.params['ns']}/{ctx.params['name']}")

    async def _like(self, ctx: Ctx) -> Response:
        repo = self._repo(ctx)
        if ctx.user is None:
            raise HubError(401, None, "You must be signed in to like a repo")
        with self.storage.lock:
            if ctx.request.method == "POST":
                self.storage.db.execute("INSERT OR IGNORE INTO likes(user, rid, created_at) VALUES (?,?,?)",
                                        (ctx.user.name, repo.rid, time.time()))
            else:
                self.storage.db.execute("DELETE FROM likes WHERE user=? AND rid=?", (ctx.user.name, repo.rid))
        return JSONResponse({"likes": self.count(repo)})

    async def _likers(self, ctx: Ctx) -> Response:
        repo = self._repo(ctx)
        rows = self.storage._rows("SELECT user FROM likes WHERE rid=? ORDER BY created_at", (repo.rid,))
        return JSONResponse([{"user": r[0], "fullname": self.hub.teams.fullname(r[0]), "avatarUrl": "",
                              "type": "user"} for r in rows])

    async def _likes(self, ctx: Ctx) -> Response:
        rows = self.storage._rows("SELECT rid, created_at FROM likes WHERE user=? ORDER BY created_at DESC",
                                  (ctx.params["user"],))
        out = []
        for rid, created in rows:
            repo = _by_rid(self.storage, rid)
            if repo is not None and can_read(ctx, repo):
                out.append({"createdAt": iso(created), "repo": {"name": repo.id, "type": repo.type}})
        return JSONResponse(out)


def _by_rid(storage: Storage, rid: int) -> Repo | None:
    rows = storage._rows("SELECT type, namespace, name FROM repos WHERE rid=?", (rid,))
    return storage.get_repo(rows[0][0], f"{rows[0][1]}/{rows[0][2]}") if rows else None
