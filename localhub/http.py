"""HTTP plumbing shared by localhub's routes: a raw-path router, the Hub's error format, auth, dates.

The HF clients send revisions as one percent-encoded segment (`refs%2Fpr%2F1`), so routing works on the RAW path:
split on `/` first, unquote each segment after.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .storage import HubError, Repo, Storage

log = logging.getLogger("localhub")
ROLES = ("read", "write")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    token_name: str = "localhub"
    scope: str | None = None  # a namespace: the only one whose private repos the token reaches (a Space's token)


@dataclass
class Ctx:
    """What a route handler gets: the request, the hub, the caller and the path parameters."""

    request: Request
    hub: Any  # localhub.app.Hub (avoids an import cycle)
    user: User | None
    params: dict[str, str]

    @property
    def base_url(self) -> str:
        # The clients talk to exactly the origin in HF_ENDPOINT; echo it so hrefs are same-origin (trap 3 and 4).
        return str(self.request.base_url).rstrip("/")

    @property
    def storage(self) -> Storage:
        return self.hub.storage

    async def json(self) -> dict:
        """The JSON object body; a malformed one is the client's error (400), not a localhub bug (500)."""
        try:
            body = await self.request.json()
        except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
            raise HubError(400, None, "Request body is not valid JSON") from None
        except RecursionError:
            raise HubError(400, None, "Request body is nested too deeply") from None
        if not isinstance(body, dict):
            raise HubError(400, None, "Request body must be a JSON object")
        return body

    def limit_body(self, limit: int) -> None:
        """This request's body may be at most `limit` bytes (app.py's default is per route class): 413 beyond."""
        body = self.request.scope.get("localhub.body")
        if body is not None:
            body.set_limit(limit)


Handler = Callable[[Ctx], Awaitable[Response]]


@dataclass
class Route:
    methods: tuple[str, ...]
    segments: list[str]
    handler: Handler
    route_class: str  # download | upload | commit | api: what fault injection targets

    def match(self, parts: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            if seg.endswith("*}"):
                params[seg[1:-2]] = "/".join(parts[i:])
                return params
            if i >= len(parts):
                return None
            if seg.startswith("{"):
                name, _, allowed = seg[1:-1].partition(":")
                if allowed and parts[i] not in allowed.split("|"):
                    return None
                params[name] = parts[i]
            elif seg != parts[i]:
                return None
        return params if len(parts) == len(self.segments) else None


@dataclass
class Router:
    routes: list[Route] = field(default_factory=list)

    def add(self, methods: str, pattern: str, route_class: str = "api") -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.routes.append(Route(tuple(methods.split(",")), pattern.strip("/").split("/"), fn, route_class))
            return fn

        return deco

    def find(self, method: str, raw_path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, params, path_matched_other_method)."""
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        other = False
        for r in self.routes:
            params = r.match(parts)
            if params is None:
                continue
            if method in r.methods or (method == "HEAD" and "GET" in r.methods):
                return r, params, False
            other = True
        return None, {}, other


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def error_response(err: HubError, extra_headers: dict[str, str] | None = None) -> Response:
    # A header value must be latin-1 without control characters nor surrounding whitespace: messages can quote user
    # input (paths, revisions), and a CR/LF, a NUL or a trailing blank in a header would make the HTTP layer drop the
    # connection (or, with a laxer one, split headers).
    message = _CONTROL_RE.sub(" ", err.message).encode("latin-1", "replace").decode("latin-1").strip()
    headers = {"X-Error-Message": message}
    if err.code:
        headers["X-Error-Code"] = err.code
    headers.update(extra_headers or {})
    return JSONResponse({**err.extra, "error": err.message}, status_code=err.status, headers=headers)


_KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object"}


def field(body: dict, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """`body[key]` when it has the type `kind`, `default` when it is absent or null; otherwise a 400 that names the
    field (a malformed body is the client's error, never a 500)."""
    value = body.get(key)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise HubError(400, None, f"{key} must be {want}, not {type(value).__name__}")
    return value


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


REPO_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
TYPE_OF_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,95}$")  # the Hub's user names may start with "_"


def authenticate(tokens: Mapping[str, User], authorization: str | None) -> User | None:
    """Bearer token -> user; no header -> anonymous; an unknown token -> 401 as on the Hub."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    user = tokens.get(token.strip()) if scheme.lower() == "bearer" else None
    if user is None:
        raise HubError(401, None, "Invalid credentials in Authorization header")
    return user


def namespace_role(ctx: Ctx, namespace: str) -> str | None:
    """The caller's role in a namespace (localhub/teams.py): admin of its own, its org role, else None. A read
    token caps it at read: it may see what the role sees, never change it."""
    user = ctx.user
    if user is None or (user.scope is not None and user.scope.lower() != namespace.lower()):
        return None
    role = ctx.hub.teams.role(user.name, namespace)
    return "read" if role and user.role != "write" else role


def can_read(ctx: Ctx, repo: Repo) -> bool:
    return not repo.private or namespace_role(ctx, repo.namespace) is not None


def not_found(ctx: Ctx) -> HubError:
    """The Hub's RepoNotFound (401 anonymous, 404 signed in): the same for a missing repo and a hidden one."""
    # The Hub's own words: huggingface_hub writes its longer message itself, and appends the server's only when it
    # is not already part of it, so anything longer would be repeated in every RepositoryNotFoundError.
    return HubError(401 if ctx.user is None else 404, "RepoNotFound", "Repository not found")


class Moved(Exception):
    """The repo was renamed: the dispatcher answers 307 to the same path under the new id (the Hub's redirect)."""

    def __init__(self, old_id: str, new_id: str):
        super().__init__(f"{old_id} -> {new_id}")
        self.old_id, self.new_id = old_id, new_id


def repo_for_read(ctx: Ctx, type_: str, repo_id: str) -> Repo:
    """The repo if the caller may see it; a renamed repo's old id redirects (`Moved`); otherwise RepoNotFound."""
    repo = ctx.storage.get_repo(type_, repo_id)
    if repo is None:
        moved = ctx.storage.redirect_for(type_, repo_id)
        if moved is not None and can_read(ctx, moved):
            raise Moved(repo_id, moved.id)
    if repo is None or not can_read(ctx, repo):
        raise not_found(ctx)
    return repo


def check_write(ctx: Ctx, namespace: str) -> User:
    """A write needs a write token of the namespace's owner or of a write/admin member of its org: 401 anonymous,
    403 otherwise."""
    user = ctx.user
    if user is None:
        raise HubError(401, None, "You must be authenticated to write to the Hub (no token sent)")
    if user.role != "write":
        raise HubError(403, None, f"You don't have the rights to write to {namespace}: your token is read-only")
    if namespace_role(ctx, namespace) not in ("write", "admin"):
        raise HubError(403, None, f"You don't have the rights to write to the namespace {namespace!r}")
    return user


def canonical_namespace(ctx: Ctx, namespace: str) -> str:
    """A namespace spelled as its owner is: ids compare case-insensitively, but keep one spelling."""
    if ctx.user is not None and ctx.user.name.lower() == namespace.lower():
        return ctx.user.name
    org = ctx.hub.teams.org(namespace)
    return org["name"] if org else namespace


def can_write(ctx: Ctx, repo: Repo) -> bool:
    try:
        check_write(ctx, repo.namespace)
    except HubError:
        return False
    return True


def repo_for_write(ctx: Ctx, type_: str, repo_id: str) -> Repo:
    repo = repo_for_read(ctx, type_, repo_id)
    check_write(ctx, repo.namespace)
    return repo
