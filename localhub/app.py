"""The localhub ASGI app: the Hub object (storage, users, orgs, extensions) and the request dispatcher.

The core is storage, users and orgs (teams.py), discussions and pull requests (discussions.py) and gated access
(gating.py): the permission checks of every route depend on them. Extensions (Spaces, webhooks, fault injection)
plug in through `Extension`: they add routes and hear about repo events (created, deleted, moved, commit, ref
change, discussion) without the core knowing them.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections import ChainMap
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from . import routes_duplicate, routes_files, routes_manage, routes_repos
from .collections import Collections
from .discussions import Discussions
from .gating import Gates
from .http import Ctx, HubError, Moved, Router, User, authenticate, error_response, not_found
from .likes import Likes
from .listing import count_download, install_likes
from .storage import Repo, Storage
from .teams import Teams

log = logging.getLogger("localhub")
API_BODY_LIMIT = 16 * 1024 * 1024  # a JSON or form body: repo settings, preupload, paths-info, discussions...
COMMIT_BODY_ENV = "LOCALHUB_MAX_COMMIT_BYTES"


class Body:
    """The request's `receive`, counting body bytes against a limit: a HubError 413 as soon as they pass it.

    What a refused request still sends is read and dropped by uvicorn after the answer (it keeps the connection
    open and reading until the body ends), so a client that sends its whole body before reading hears the 413
    instead of a reset connection; one that waits for `100 Continue` is answered before it sends anything."""

    def __init__(self, receive: Any):
        self.receive = receive
        self.limit: int | None = API_BODY_LIMIT
        self.received = 0

    def set_limit(self, limit: int | None) -> None:
        self.limit = limit
        self._check()

    def _check(self) -> None:
        if self.limit is not None and self.received > self.limit:
            raise HubError(413, None, f"Request body too large: this route takes at most {self.limit} bytes")

    async def __call__(self) -> dict:
        msg = await self.receive()
        if msg["type"] == "http.request":
            self.received += len(msg.get("body") or b"")
            self._check()
        return msg


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
                 orgs: dict[str, dict[str, str]] | None = None, unsafe_spaces: bool = False,
                 allow_private_webhooks: bool = False):
        self.data_dir = Path(data_dir)
        self.storage = Storage(self.data_dir)
        self.tokens = users  # token -> User; never logged
        # Read-only tokens minted for running Spaces (localhub/spaces_runner.py); in memory only, revoked with the run.
        self.space_tokens: dict[str, User] = {}
        self.auth_tokens = ChainMap(self.tokens, self.space_tokens)
        self.unsafe_spaces = unsafe_spaces  # the operator ran Spaces unsandboxed on purpose (localhub/sandbox.py)
        self.allow_private_webhooks = allow_private_webhooks  # webhook targets on loopback/private networks
        self.commit_body_limit = int(os.environ.get(COMMIT_BODY_ENV) or 1 << 30)
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
        install_likes(self.storage.db)  # the listing's like counters (localhub/listing.py), once likes' table exists
        self.collections = Collections(self)
        self.router = Router(routes_repos.router.routes + routes_files.router.routes + routes_manage.router.routes
                             + routes_duplicate.router.routes + self.collections.router.routes
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

    def mint_space_token(self, repo: Repo) -> str:
        """A read-only token for one run of a Space: it reads the Space's own namespace's repos (private ones
        included, as its owner would) and public repos; it writes nothing. Valid until the supervisor revokes it."""
        token = f"hf_space_{secrets.token_urlsafe(24)}"
        self.space_tokens[token] = User(repo.namespace, "read", f"space {repo.id}", scope=repo.namespace)
        return token

    def _load_secret(self) -> bytes:
        """The key that signs LFS upload URLs and derives the admin token: created 0600, and kept 0600."""
        path = self.data_dir / "secret.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
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
        count_download(self.storage, repo, path)  # the listing's `downloads` (localhub/listing.py)
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
        body = scope["localhub.body"] = Body(receive)
        request = Request(scope, body)
        response = await self.dispatch(request)
        trace = request.headers.get("x-amzn-trace-id")
        if trace:
            response.headers["X-Request-Id"] = trace
        _safe_headers(response)
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
                user = authenticate(self.auth_tokens, request.headers.get("authorization"))
            except HubError as err:
                return error_response(err)
            return error_response(not_found(Ctx(request, self, user, {})))
        if route is None:
            status = 405 if other else 404
            return JSONResponse({"error": f"{request.method} {raw_path} is not a localhub route"}, status_code=status)
        body = request.scope.get("localhub.body")
        if body is not None:
            if route.route_class == "upload" and request.method == "PUT":
                body.limit = None  # the LFS PUT: its signed size is the limit (routes_files.lfs_put)
            elif route.route_class == "commit":
                body.limit = self.commit_body_limit
            length = request.headers.get("content-length", "")
            if body.limit is not None and length.isdigit() and int(length) > body.limit:
                return error_response(HubError(413, None, f"Request body too large: {length} bytes, and this route "
                                                          f"takes at most {body.limit}"))
        for ext in self.extensions:
            injected = await ext.before_request(route.route_class, request)
            if injected is not None:
                return injected
        try:
            user = authenticate(self.auth_tokens, request.headers.get("authorization"))
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
        except RecursionError:  # a JSON document nested thousands deep: malformed input, not a localhub bug
            return error_response(HubError(400, None, "Request body is nested too deeply"))
        except Exception:  # a bug in localhub: answer 500 with no internals, keep serving
            log.exception("error serving %s %s", request.method, raw_path)
            return JSONResponse({"error": "localhub internal error"}, status_code=500)


_BAD_HEADER_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _safe_headers(response: Response) -> None:
    """No header value with a control character or surrounding blanks: the HTTP layer would refuse to send it and
    drop the connection instead. (error_response already cleans its message; this covers any other header.)"""
    raw = getattr(response, "raw_headers", None)
    if raw and any(_BAD_HEADER_BYTES.search(v) or v != v.strip() for _, v in raw):
        response.raw_headers = [(k, _BAD_HEADER_BYTES.sub(b" ", v).strip()) for k, v in raw]


def _type_of(raw_path: str) -> str:
    p = raw_path.lstrip("/")
    if p.startswith(("datasets/", "api/datasets/")):
        return "dataset"
    if p.startswith(("spaces/", "api/spaces/")):
        return "space"
    return "model"
