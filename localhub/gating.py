"""Gated repos, enforced: `gated: auto|manual` (update_repo_settings) closes a repo's files to everyone but its
namespace's members and the users whose access request was accepted.

What a gate closes is what it closes on the Hub: file downloads (`/resolve`, GET and HEAD) and `auth-check`; the
repo's card, file list and metadata stay visible. A refused download is the Hub's GatedRepo error (header
`X-Error-Code: GatedRepo`, so huggingface_hub raises GatedRepoError): 401 for an anonymous caller, 403 for a signed-in
one without accepted access.

Access requests (one per user and repo, kept in SQLite):
    POST /api/{t}s/{ns}/{name}/ask-access  (or the Hub's web path /{prefix}{ns}/{name}/ask-access), signed in, with
         optional form fields as a JSON object: `auto` repos accept at once, `manual` ones queue the request
    GET  /api/{t}s/{ns}/{name}/user-access-request/{pending|accepted|rejected}          (writers)
    POST /api/{t}s/{ns}/{name}/user-access-request/handle {user|requestId, status, rejectionReason?}  (writers)
    POST /api/{t}s/{ns}/{name}/user-access-request/grant {user}                                    (writers)
    GET  /api/{t}s/{ns}/{name}/auth-check[/write]        200 if the caller may download (write: may push)
Moving a request to the status it already has is a 400, as on the Hub; so is granting access to a user who has it.
"""

from __future__ import annotations

import json
import secrets
import time

from starlette.responses import JSONResponse, Response

from .http import REPO_PREFIX, TYPE_OF_PLURAL, Ctx, HubError, Router, check_write, iso, namespace_role, repo_for_read
from .storage import Repo

SCHEMA = """
CREATE TABLE IF NOT EXISTS access_requests (
  rid INTEGER NOT NULL, user TEXT NOT NULL COLLATE NOCASE, status TEXT NOT NULL, request_id TEXT NOT NULL UNIQUE,
  created_at REAL NOT NULL, fields JSON, reason TEXT, PRIMARY KEY(rid, user));
"""
STATUSES = ("pending", "accepted", "rejected")
T = "{t:models|datasets|spaces}"


class Gates:
    """Access requests and the gate check the download routes call."""

    def __init__(self, hub):
        self.hub, self.storage = hub, hub.storage
        with self.storage.lock:
            self.storage.db.executescript(SCHEMA)
        api = f"/api/{T}/{{ns}}/{{name}}"
        self.router = Router()
        self.router.add("POST", f"{api}/ask-access")(self._ask)
        for prefix in ("", "datasets/", "spaces/"):
            self.router.add("POST", f"/{prefix}{{ns}}/{{name}}/ask-access")(self._ask)
        self.router.add("GET", f"{api}/user-access-request/{{status:pending|accepted|rejected}}")(self._list)
        self.router.add("POST", f"{api}/user-access-request/{{action:handle|grant}}")(self._handle)
        self.router.add("GET", f"{api}/auth-check")(self._auth_check)
        self.router.add("GET", f"{api}/auth-check/write")(self._auth_check)

    # ---- the gate ------------------------------------------------------------------------------------------------
    def status(self, repo: Repo, user: str) -> str | None:
        rows = self.storage._rows("SELECT status FROM access_requests WHERE rid=? AND user=?", (repo.rid, user))
        return rows[0][0] if rows else None

    def check(self, ctx: Ctx, repo: Repo) -> None:
        """Raise the Hub's GatedRepo error unless the caller may download the repo's files."""
        if not repo.gated or namespace_role(ctx, repo.namespace) is not None:
            return
        if ctx.user is not None and self.status(repo, ctx.user.name) == "accepted":
            return
        what = f"{repo.type} {repo.id}"
        if ctx.user is None:
            raise HubError(401, "GatedRepo", f"Access to {what} is restricted. You must have access to it and be "
                                             "authenticated to access it. Please log in.")
        raise HubError(403, "GatedRepo", f"Access to {what} is restricted and you are not in the authorized list. "
                                         f"Visit {ctx.base_url}/{REPO_PREFIX[repo.type]}{repo.id} to ask for access.")

    def forget(self, repo: Repo) -> None:
        with self.storage.lock:
            self.storage.db.execute("DELETE FROM access_requests WHERE rid=?", (repo.rid,))

    # ---- routes ------------------------------------------------------------------------------------------------
    def _repo(self, ctx: Ctx) -> Repo:
        type_ = TYPE_OF_PLURAL.get(ctx.params.get("t", ""))
        if type_ is None:  # the Hub's web path carries no {t}: its prefix (none, datasets/, spaces/) gives the type
            path = ctx.request.url.path.lstrip("/")
            type_ = "dataset" if path.startswith("datasets/") else "space" if path.startswith("spaces/") else "model"
        return repo_for_read(ctx, type_, f"{ctx.params['ns']}/{ctx.params['name']}")

    def _put(self, repo: Repo, user: str, status: str, fields: dict | None = None, reason: str | None = None) -> None:
        with self.storage.lock:
            self.storage.db.execute(
                "INSERT INTO access_requests(rid, user, status, request_id, created_at, fields, reason) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(rid, user) DO UPDATE SET status=excluded.status, "
                "reason=excluded.reason, created_at=excluded.created_at",
                (repo.rid, user, status, secrets.token_hex(12), time.time(), json.dumps(fields) if fields else None,
                 reason))

    async def _ask(self, ctx: Ctx) -> Response:
        repo = self._repo(ctx)
        if ctx.user is None:
            raise HubError(401, None, "You must be signed in to ask for access")
        if not repo.gated:
            raise HubError(400, None, f"{repo.id} is not gated: there is nothing to ask for")
        current = self.status(repo, ctx.user.name)
        if current is None:
            fields = await ctx.json() if await ctx.request.body() else None
            self._put(repo, ctx.user.name, "accepted" if repo.gated == "auto" else "pending", fields)
        return JSONResponse({"status": self.status(repo, ctx.user.name)})

    def _request_json(self, row) -> dict:
        user = row["user"]
        out = {"user": {"user": user, "fullname": self.hub.teams.fullname(user), "email": None, "avatarUrl": "",
                        "type": "user", "isPro": False}, "requestId": row["request_id"], "status": row["status"],
               "timestamp": iso(row["created_at"])}
        if row["fields"]:
            out["fields"] = json.loads(row["fields"])
        if row["reason"]:
            out["rejectionReason"] = row["reason"]
        return out

    async def _list(self, ctx: Ctx) -> Response:
        repo = self._repo(ctx)
        check_write(ctx, repo.namespace)
        rows = self.storage._rows("SELECT * FROM access_requests WHERE rid=? AND status=? ORDER BY created_at",
                                  (repo.rid, ctx.params["status"]))
        return JSONResponse([self._request_json(r) for r in rows])

    async def _handle(self, ctx: Ctx) -> Response:
        repo = self._repo(ctx)
        check_write(ctx, repo.namespace)
        if not repo.gated:
            raise HubError(400, None, f"{repo.id} is not gated")
        body = await ctx.json()
        if ctx.params["action"] == "grant":
            user = body.get("user")
            if not isinstance(user, str) or user.lower() not in {u.lower() for u in self.hub.user_names()}:
                raise HubError(404, None, f"User {user!r} not found")
            if self.status(repo, user) == "accepted":
                raise HubError(400, None, f"{user} already has access to {repo.id}")
            self._put(repo, user, "accepted")
            return JSONResponse({"status": "accepted", "user": user})
        status = body.get("status")
        if status not in STATUSES:
            raise HubError(400, None, f"status is one of {STATUSES}")
        if body.get("requestId"):
            rows = self.storage._rows("SELECT user FROM access_requests WHERE rid=? AND request_id=?",
                                      (repo.rid, body["requestId"]))
        else:
            rows = self.storage._rows("SELECT user FROM access_requests WHERE rid=? AND user=?",
                                      (repo.rid, str(body.get("user"))))
        if not rows:
            raise HubError(404, None, f"No access request for {body.get('user') or body.get('requestId')} on {repo.id}")
        user = rows[0][0]
        if self.status(repo, user) == status:
            raise HubError(400, None, f"The access request of {user} is already {status}")
        self._put(repo, user, status, reason=body.get("rejectionReason") if status == "rejected" else None)
        return JSONResponse({"status": status, "user": user})

    async def _auth_check(self, ctx: Ctx) -> Response:
        repo = self._repo(ctx)
        if ctx.request.url.path.endswith("/write"):
            check_write(ctx, repo.namespace)
        self.check(ctx, repo)
        return JSONResponse({"ok": True})
