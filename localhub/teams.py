"""Organizations and user profiles: who may act in which namespace.

A user owns the namespace of its name (role `admin` there). An org is a namespace whose members have a role, as on
the Hub: `read` (sees the org's private repos), `write` (also creates repos, commits, merges PRs, changes settings),
`admin` (also manages members). A read token caps any role at read. Names compare case-insensitively, as the Hub's.

Orgs come from the command line (`--org NAME:USER=ROLE,...`, or $LOCALHUB_ORGS with orgs separated by `;`), from
`LocalHub(orgs={name: {user: role}})`, or from the admin API. They live in SQLite, so what the API changed survives a
restart; the start-up specs are applied again at every start (upserted: members listed there get that role).

Routes:
    GET  /api/organizations/{org}/overview | /members        HfApi.get_organization_overview / list_organization_members
    GET|PUT|DELETE /_localhub/orgs/{org}                     {fullname?, members?: {user: role}, defaultPrivate?}
    PUT|DELETE     /_localhub/orgs/{org}/members/{user}      {role}
    PUT            /_localhub/users/{user}                   {fullname}
The /_localhub routes take the hub admin token (header X-Localhub-Admin, see localhub/admin.py); an org's own admins
may also change its members and settings with their bearer token. `defaultPrivate` makes the org's new repos private
unless created public explicitly (the Hub's Enterprise setting).
"""

from __future__ import annotations

import hashlib
import time

from starlette.responses import JSONResponse, Response

from .admin import is_admin
from .http import NAMESPACE_RE, Ctx, HubError, Router, User, field
from .storage import Storage

ORG_ROLES = ("read", "write", "admin")
SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
  name TEXT PRIMARY KEY COLLATE NOCASE, fullname TEXT, default_private INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS org_members (
  org TEXT NOT NULL COLLATE NOCASE, user TEXT NOT NULL COLLATE NOCASE, role TEXT NOT NULL, PRIMARY KEY(org, user));
CREATE TABLE IF NOT EXISTS profiles (user TEXT PRIMARY KEY COLLATE NOCASE, fullname TEXT);
"""


def parse_orgs(specs: list[str]) -> dict[str, dict[str, str]]:
    """["team:alice=admin,bob=write", ...] -> {"team": {"alice": "admin", "bob": "write"}}; ValueError says why."""
    orgs: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, sep, members = spec.partition(":")
        if not sep or not NAMESPACE_RE.match(name):
            raise ValueError(f"--org wants NAME:USER=ROLE,USER=ROLE (got {spec!r})")
        orgs[name] = {}
        for item in filter(None, members.split(",")):
            user, _, role = item.partition("=")
            if not NAMESPACE_RE.match(user) or role not in ORG_ROLES:
                raise ValueError(f"--org {name}: member {item!r} wants USER=ROLE with ROLE in {ORG_ROLES}")
            orgs[name][user] = role
    return orgs


def _object_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:24]


class Teams:
    """Orgs, memberships and full names, on the hub's SQLite connection (under the storage lock)."""

    def __init__(self, storage: Storage, user_names):
        self.storage = storage
        self.user_names = user_names  # () -> the configured users' names: an org may not shadow one
        with storage.lock:
            storage.db.executescript(SCHEMA)
        self.router = Router()
        self.router.add("GET", "/api/organizations/{org}/overview")(self._overview)
        self.router.add("GET", "/api/organizations/{org}/members")(self._members)
        self.router.add("GET,PUT,DELETE", "/_localhub/orgs/{org}", route_class="admin")(self._admin_org)
        self.router.add("PUT,DELETE", "/_localhub/orgs/{org}/members/{user}", route_class="admin")(self._admin_member)
        self.router.add("PUT", "/_localhub/users/{user}", route_class="admin")(self._admin_user)

    # ---- queries -----------------------------------------------------------------------------------------------
    def role(self, username: str, namespace: str) -> str | None:
        """`username`'s role in `namespace`: admin of its own, its org role, else None."""
        if username.lower() == namespace.lower():
            return "admin"
        rows = self.storage._rows("SELECT role FROM org_members WHERE org=? AND user=?", (namespace, username))
        return rows[0][0] if rows else None

    def org(self, name: str) -> dict | None:
        rows = self.storage._rows("SELECT * FROM orgs WHERE name=?", (name,))
        if not rows:
            return None
        members = self.storage._rows("SELECT user, role FROM org_members WHERE org=? ORDER BY user", (name,))
        return {"name": rows[0]["name"], "fullname": rows[0]["fullname"] or rows[0]["name"],
                "defaultPrivate": bool(rows[0]["default_private"]), "members": {m[0]: m[1] for m in members}}

    def orgs_of(self, username: str) -> list[tuple[dict, str]]:
        rows = self.storage._rows("SELECT org, role FROM org_members WHERE user=? ORDER BY org", (username,))
        return [(org, r[1]) for r in rows if (org := self.org(r[0]))]

    def fullname(self, username: str) -> str:
        rows = self.storage._rows("SELECT fullname FROM profiles WHERE user=?", (username,))
        return rows[0][0] if rows and rows[0][0] else username

    def whoami_orgs(self, username: str) -> list[dict]:
        """The `orgs` of whoami-v2, in the Hub's shape."""
        return [{"type": "org", "id": _object_id(f"org/{o['name']}"), "name": o["name"], "fullname": o["fullname"],
                 "roleInOrg": role, "email": None, "canPay": False, "isEnterprise": o["defaultPrivate"],
                 "plan": "team", "avatarUrl": "", "periodEnd": None, "missingMFA": False}
                for o, role in self.orgs_of(username)]

    # ---- changes -----------------------------------------------------------------------------------------------
    def put_org(self, name: str, fullname: str | None = None, members: dict[str, str] | None = None,
                default_private: bool | None = None, replace_members: bool = False) -> dict:
        if not NAMESPACE_RE.match(name):
            raise HubError(400, None, f"Invalid organization name: {name!r}")
        if name.lower() in {u.lower() for u in self.user_names()}:
            raise HubError(409, None, f"{name} is a user name: an organization cannot share it")
        for user, role in (members or {}).items():
            if not NAMESPACE_RE.match(user) or role not in ORG_ROLES:
                raise HubError(400, None, f"Invalid member {user!r}={role!r}: role is one of {ORG_ROLES}")
        with self.storage.lock:
            db = self.storage.db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR IGNORE INTO orgs(name, created_at) VALUES (?, ?)", (name, time.time()))
                if fullname is not None:
                    db.execute("UPDATE orgs SET fullname=? WHERE name=?", (fullname, name))
                if default_private is not None:
                    db.execute("UPDATE orgs SET default_private=? WHERE name=?", (int(default_private), name))
                if replace_members:
                    db.execute("DELETE FROM org_members WHERE org=?", (name,))
                db.executemany("INSERT OR REPLACE INTO org_members(org, user, role) VALUES (?,?,?)",
                               [(name, u, r) for u, r in (members or {}).items()])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.org(name)  # type: ignore[return-value]

    def set_member(self, org: str, user: str, role: str | None) -> None:
        with self.storage.lock:
            if role is None:
                self.storage.db.execute("DELETE FROM org_members WHERE org=? AND user=?", (org, user))
            else:
                self.put_org(org, members={user: role})

    def delete_org(self, name: str) -> None:
        with self.storage.lock:
            self.storage.db.execute("DELETE FROM org_members WHERE org=?", (name,))
            self.storage.db.execute("DELETE FROM orgs WHERE name=?", (name,))

    def set_fullname(self, username: str, fullname: str) -> None:
        with self.storage.lock:
            self.storage.db.execute("INSERT OR REPLACE INTO profiles(user, fullname) VALUES (?, ?)",
                                    (username, fullname))

    # ---- routes ------------------------------------------------------------------------------------------------
    def _org_or_404(self, name: str) -> dict:
        org = self.org(name)
        if org is None:
            raise HubError(404, None, f"Organization {name} not found")
        return org

    async def _overview(self, ctx: Ctx) -> Response:
        org = self._org_or_404(ctx.params["org"])
        repos = {t: sum(1 for r in ctx.storage.list_repos(t) if r.namespace.lower() == org["name"].lower()
                        and not r.private) for t in ("model", "dataset", "space")}
        return JSONResponse({"_id": _object_id(f"org/{org['name']}"), "name": org["name"], "fullname": org["fullname"],
                             "avatarUrl": "", "isVerified": False, "isFollowing": False,
                             "numUsers": len(org["members"]), "numModels": repos["model"],
                             "numDatasets": repos["dataset"], "numSpaces": repos["space"], "numFollowers": 0,
                             "numPapers": 0})

    async def _members(self, ctx: Ctx) -> Response:
        org = self._org_or_404(ctx.params["org"])
        return JSONResponse([{"user": u, "fullname": self.fullname(u), "type": "user", "avatarUrl": "",
                              "isPro": False, "role": r} for u, r in org["members"].items()])

    def _authorize(self, ctx: Ctx, org: str | None) -> None:
        """Hub admin, or (for an existing org) one of its admins with a write token."""
        if is_admin(ctx):
            return
        user: User | None = ctx.user
        if org and user and user.role == "write" and self.org(org) and self.role(user.name, org) == "admin":
            return
        raise HubError(403, None, "Managing organizations needs the hub admin token (header X-Localhub-Admin) "
                                  "or, for its members, a write token of one of the org's admins")

    async def _admin_org(self, ctx: Ctx) -> Response:
        name, method = ctx.params["org"], ctx.request.method
        self._authorize(ctx, name if method != "PUT" or self.org(name) else None)
        if method == "GET":
            return JSONResponse(self._org_or_404(name))
        if method == "DELETE":
            self._org_or_404(name)
            self.delete_org(name)
            return JSONResponse({})
        body = await ctx.json()
        members = body.get("members")
        if members is not None and not isinstance(members, dict):
            raise HubError(400, None, "members is an object {user: role}")
        return JSONResponse(self.put_org(name, fullname=field(body, "fullname", str), members=members,
                                         default_private=field(body, "defaultPrivate", bool),
                                         replace_members=members is not None))

    async def _admin_member(self, ctx: Ctx) -> Response:
        org, user = ctx.params["org"], ctx.params["user"]
        self._authorize(ctx, org)
        self._org_or_404(org)
        if ctx.request.method == "DELETE":
            self.set_member(org, user, None)
        else:
            role = (await ctx.json()).get("role")
            if role not in ORG_ROLES:
                raise HubError(400, None, f"role is one of {ORG_ROLES}")
            self.set_member(org, user, role)
        return JSONResponse(self.org(org))

    async def _admin_user(self, ctx: Ctx) -> Response:
        self._authorize(ctx, None)
        fullname = (await ctx.json()).get("fullname")
        if not isinstance(fullname, str) or not fullname.strip():
            raise HubError(400, None, "fullname (a non-empty string) is required")
        self.set_fullname(ctx.params["user"], fullname.strip())
        return JSONResponse({"user": ctx.params["user"], "fullname": fullname.strip()})
