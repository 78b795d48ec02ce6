"""The localhub ASGI app: the Hub object (storage, users, orgs, extensions) and the request dispatcher.

The core is storage, users and orgs (teams.py), discussions and pull requests (discussions.py) and gated access
(gating.py): the permission checks of every route depend on them. Extensions (Spaces, webhooks, fault injection)
plug in through `Extension`: they add routes and hear about repo events (created, deleted, moved, commit, ref
change, discussion) without the core knowing them.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from . import routes_files, routes_manage, routes_repos
from .discussions import Discussions
from .gating import Gates
from .http import Ctx, HubError, Moved, Router, User, authenticate, error_response, not_found
from .likes import Likes
from .storage import Repo, Storage
from .teams import Teams

log = logging.getLogger("localhub")


class Extension:
    """Base class for what plugs into the hub; every hook is optional."""

    router: Router | None = None

    async def on_repo_created(self, repo: Repo, body: dict) -> None: ...
    async def on_repo_deleted(self, repo: Repo) -> None: ...
    async def on_repo_moved(self, old: Repo, new: Repo) -> None: ...
    async def on_commit(self, repo: Repo, branch: str, oid: str) -> None: ...
    async def on_ref_change(self, repo: Repo, change: str, ref: str, oid: str | None) -> None: ...
    async def on_download(self, repo: Repo, path: str) -> None: ...
    async def on_discussion(self, repo: Repo, action: str, scope: str, discussion: dict, comment: dict | None) -> None:
        """`discussion`/`comment`: the objects of a webhook payload (localhub/discussions.py builds them)."""
    def space_info(self, repo: Repo, base_url: str) -> dict: return {}
    async def before_request(self, route_class: str, request: Request) -> Response | None: return None
    def close(self) -> None: ...


class Hub:
    """Storage + users + extensions; `asgi` is the app uvicorn serves."""

    def __init__(self, data_dir: str | Path, users: dict[str, User], extensions: list[Extension] | None = None,
                 orgs: dict[str, dict[str, str]] | None = None):
        self.data_dir = Path(data_dir)
        self.storage = Storage(self.data_dir)
        self.tokens = users  # token -> User; never logged
        self.secret = self._load_secret()
        self.used_nonces: set[str] = set()
        self.extensions: list[Extension] = []
        self.teams = Teams(self.storage, self.user_names)
        for name, members in (orgs or {}).items():
            try:
                self.teams.put_org(name, members=members)
            except HubError as err:
                raise ValueError(f"--org {name}: {err.message}") from None
        self.discussions = Discussions(self)
        self.gates = Gates(self)
        self.likes = Likes(self)
        self.router = Router(routes_repos.router.routes + routes_files.router.routes + routes_manage.router.routes
                             + self.teams.router.routes + self.discussions.router.routes + self.gates.router.routes
                             + self.likes.router.routes)
        self.base_url = ""  # set by the server once it knows its port
        for ext in extensions or []:
            self.add_extension(ext)

    def add_extension(self, ext: Extension) -> None:
        self.extensions.append(ext)
        if ext.router:
            # Extension routes first: they are more specific (e.g. /api/spaces/{id}/runtime).
            self.router.routes[:0] = ext.router.routes

    def _names_missing_repo(self, raw_path: str) -> bool:
        """An unrouted API or file path that names a repo this hub does not have."""
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        if parts[0] == "api":
            if len(parts) < 3 or parts[1] not in ("models", "datasets", "spaces"):
                return False
            return len(parts) < 4 or self.storage.get_repo(parts[1][:-1], f"{parts[2]}/{parts[3]}") is None
        if parts[0] in ("datasets", "spaces"):
            parts = parts[1:]
        return len(parts) >= 2 and parts[1] == "resolve"

    def user_names(self) -> set[str]:
        return {u.name for u in self.tokens.values()}

    def _load_secret(self) -> bytes:
        path = self.data_dir / "secret.key"
        if not path.exists():
            path.write_bytes(secrets.token_bytes(32))
            path.chmod(0o600)
        return path.read_bytes()

    # ---- events fan out to the extensions ------------------------------------------------------------------
    async def on_repo_created(self, repo: Repo, body: dict) -> None:
        for ext in self.extensions:
            await ext.on_repo_created(repo, body)

    async def on_repo_deleted(self, repo: Repo) -> None:
        for part in (self.discussions, self.gates, self.likes):
            part.forget(repo)
        for ext in self.extensions:
            await ext.on_repo_deleted(repo)

    async def on_repo_moved(self, old: Repo, new: Repo) -> None:
        for ext in self.extensions:
            await ext.on_repo_moved(old, new)

    async def on_discussion(self, repo: Repo, action: str, scope: str, discussion: dict, comment: dict | None) -> None:
        for ext in self.extensions:
            await ext.on_discussion(repo, action, scope, discussion, comment)

    async def on_commit(self, repo: Repo, branch: str, oid: str) -> None:
        for ext in self.extensions:
            await ext.on_commit(repo, branch, oid)

    async def on_ref_change(self, repo: Repo, change: str, ref: str, oid: str | None) -> None:
        for ext in self.extensions:
            await ext.on_ref_change(repo, change, ref, oid)

    async def on_download(self, repo: Repo, path: str) -> None:
        for ext in self.extensions:
            await ext.on_download(repo, path)

    def space_info(self, repo: Repo, base_url: str) -> dict:
        info: dict[str, Any] = {"sdk": repo.sdk}
        for ext in self.extensions:
            info.update(ext.space_info(repo, base_url))
        return info

    def close(self) -> None:
        for ext in self.extensions:
            ext.close()

    # ---- ASGI ----------------------------------------------------------------------------------------------
    async def asgi(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
            self.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = Request(scope, receive)
        response = await self.dispatch(request)
        trace = request.headers.get("x-amzn-trace-id")
        if trace:
            response.headers["X-Request-Id"] = trace
        await response(scope, receive, send)

    async def dispatch(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
        if raw_path == "/api/health":
            return JSONResponse({"ok": True})
        route, params, other = self.router.find(request.method, raw_path)
        if route is None and self._names_missing_repo(raw_path):
            # `/api/models/gpt2`, `/gpt2/resolve/main/x`, `/api/models/gone/like`: a repo id without a namespace (none
            # exists here), or a route this hub lacks on a repo that does not exist. The Hub's RepoNotFound, not a
            # bare 404, is what makes `repo_exists()` answer False.
            try:
                user = authenticate(self.tokens, request.headers.get("authorization"))
            except HubError as err:
                return error_response(err)
            return error_response(not_found(Ctx(request, self, user, {})))
        if route is None:
            status = 405 if other else 404
            return JSONResponse({"error": f"{request.method} {raw_path} is not a localhub route"}, status_code=status)
        for ext in self.extensions:
            injected = await ext.before_request(route.route_class, request)
            if injected is not None:
                return injected
        try:
            user = authenticate(self.tokens, request.headers.get("authorization"))
            return await route.handler(Ctx(request, self, user, params))
        except Moved as moved:  # a renamed repo: the same request under its new id (307 keeps method and body)
            query = request.scope.get("query_string", b"").decode("latin-1")
            target = raw_path.replace(f"/{moved.old_id}/", f"/{moved.new_id}/", 1)
            if target == raw_path:
                target = raw_path.replace(f"/{moved.old_id}", f"/{moved.new_id}", 1)
            return RedirectResponse(target + (f"?{query}" if query else ""), status_code=307)
        except HubError as err:
            extra = {}
            if err.code == "EntryNotFound" and "rev" in params:
                # The client caches "absent at commit X" only when the 404 names the commit.
                try:
                    repo = self.storage.get_repo(_type_of(raw_path), f"{params['ns']}/{params['name']}")
                    if repo:
                        extra["X-Repo-Commit"] = self.storage.resolve(repo, params["rev"])[0]
                except HubError:
                    pass
            return error_response(err, extra)
        except Exception:  # a bug in localhub: answer 500 with no internals, keep serving
            log.exception("error serving %s %s", request.method, raw_path)
            return JSONResponse({"error": "localhub internal error"}, status_code=500)


def _type_of(raw_path: str) -> str:
    p = raw_path.lstrip("/")
    if p.startswith(("datasets/", "api/datasets/")):
        return "dataset"
    if p.startswith(("spaces/", "api/spaces/")):
        return "space"
    return "model"
