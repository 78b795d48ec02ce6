"""Repo-level API routes: whoami, create/delete/settings, info, listings, tree, paths-info, refs, commits, branches,
tags."""

from __future__ import annotations

import hashlib
import html
from urllib.parse import parse_qs

import yaml
from starlette.responses import JSONResponse, Response

from . import cards, listing_query
from .history import last_commits
from .http import (
    NAME_RE,
    NAMESPACE_RE,
    REPO_PREFIX,
    TYPE_OF_PLURAL,
    Ctx,
    Moved,
    Router,
    can_read,
    canonical_namespace,
    check_write,
    field,
    iso,
    namespace_role,
    repo_for_read,
    repo_for_write,
)
from .listing import derive_tags, downloads
from .repo_ids import check_new_repo_id
from .storage import SHA_RE, FileEntry, HubError, Repo

router = Router()
T = "{t:models|datasets|spaces}"


def _type(ctx: Ctx) -> str:
    return TYPE_OF_PLURAL[ctx.params["t"]]


def _rid(ctx: Ctx) -> str:
    return f"{ctx.params['ns']}/{ctx.params['name']}"


@router.add("GET", "/api/whoami-v2")
async def whoami(ctx: Ctx) -> Response:
    if ctx.user is None:
        raise HubError(401, None, "Invalid credentials in Authorization header")
    u = ctx.user
    return JSONResponse({
        "type": "user", "id": u.name, "name": u.name, "fullname": ctx.hub.teams.fullname(u.name), "email": None,
        "emailVerified": False, "canPay": False, "isPro": False, "periodEnd": None, "avatarUrl": "",
        "orgs": ctx.hub.teams.whoami_orgs(u.name),
        "auth": {"type": "access_token", "accessToken": {"displayName": u.token_name, "role": u.role}},
    })


router.add("POST", "/api/validate-yaml")(cards.validate_yaml)


@router.add("POST", "/api/repos/create")
async def create_repo(ctx: Ctx) -> Response:
    body = await ctx.json()
    type_ = field(body, "type", str) or "model"
    name, ns = field(body, "name", str) or "", field(body, "organization", str)
    field(body, "sdk", str)
    field(body, "visibility", str)
    if "/" in name:
        ns, name = name.split("/", 1)
    if ns is None:
        if ctx.user is None:
            raise HubError(401, None, "You must be authenticated to create a repo")
        ns = ctx.user.name
    check_new_repo_id(f"{ns}/{name}")  # the Hub's naming rules, with the rule in the message
    if type_ not in REPO_PREFIX or not NAME_RE.match(name) or not NAMESPACE_RE.match(ns):
        raise HubError(400, None, f"Invalid repo name or type: {ns}/{name} ({type_})")
    existing = ctx.storage.get_repo(type_, f"{ns}/{name}")
    if existing is not None and can_read(ctx, existing):  # 409 before 403, so `exist_ok` works on others' repos
        url = f"{ctx.base_url}/{REPO_PREFIX[type_]}{existing.id}"
        raise HubError(409, None, f"You already created this {type_} repo: {existing.id}", {"url": url})
    user = check_write(ctx, ns)
    ns = canonical_namespace(ctx, ns)
    org = ctx.hub.teams.org(ns)
    if body.get("private") is not None or body.get("visibility"):
        private = bool(body.get("private")) or body.get("visibility") == "private"
    else:  # neither given: the org's default (the Hub's Enterprise "private by default")
        private = bool(org and org["defaultPrivate"])
    sdk = body.get("sdk")
    if type_ == "space" and not sdk:
        raise HubError(400, None, "Space SDK is required: one of gradio, docker, static")
    url = f"{ctx.base_url}/{REPO_PREFIX[type_]}{ns}/{name}"
    files = {"README.md": cards.space_readme(name, sdk)} if type_ == "space" else None
    try:
        repo = ctx.storage.create_repo(type_, f"{ns}/{name}", private, user.name, sdk=sdk, files=files)
    except HubError as err:
        if err.status == 409:  # `create_repo(exist_ok=True)` reads the url from the 409's body
            err.extra["url"] = url
        raise
    await ctx.hub.on_repo_created(repo, body)
    return JSONResponse({"url": url, "name": repo.id, "id": repo.id})


async def _repo_from_body(ctx: Ctx) -> Repo:
    body = await ctx.json()
    name = field(body, "name", str) or ""
    ns = field(body, "organization", str) or (ctx.user.name if ctx.user else "")
    type_ = field(body, "type", str) or "model"
    if type_ not in REPO_PREFIX:
        raise HubError(400, None, f"Invalid repo type {type_[:50]!r}: one of {', '.join(REPO_PREFIX)}")
    if "/" in name:
        ns, name = name.split("/", 1)
    try:
        return repo_for_write(ctx, type_, f"{ns}/{name}")
    except Moved as moved:  # the body names the repo: follow a rename here (a 307 would repeat the same body)
        return repo_for_write(ctx, type_, moved.new_id)


@router.add("DELETE", "/api/repos/delete")
async def delete_repo(ctx: Ctx) -> Response:
    repo = await _repo_from_body(ctx)
    await ctx.hub.on_repo_deleted(repo)
    ctx.storage.delete_repo(repo)
    return JSONResponse({})


@router.add("PUT", f"/api/{T}/{{ns}}/{{name}}/settings")
async def settings(ctx: Ctx) -> Response:
    repo = repo_for_write(ctx, _type(ctx), _rid(ctx))
    body = await ctx.json()
    fields = {}
    if "private" in body and body["private"] is not None:
        fields["private"] = int(bool(body["private"]))
    if body.get("visibility"):
        fields["private"] = int(body["visibility"] == "private")
    if "gated" in body and body["gated"] is not None:
        if body["gated"] not in (False, "auto", "manual"):
            raise HubError(400, None, f"gated is false, 'auto' or 'manual', not {body['gated']!r}")
        fields["gated"] = body["gated"] or None
    if fields:
        ctx.storage.update_repo(repo, **fields)
    return JSONResponse({})


def card_data(ctx: Ctx, files: dict[str, FileEntry]) -> dict | None:
    readme = files.get("README.md")
    if not readme:
        return None
    text = ctx.storage.blob_path(readme.sha256).read_text(errors="replace")
    if not text.startswith("---"):
        return None
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def repo_info(ctx: Ctx, repo: Repo, oid: str) -> dict:
    files = ctx.storage.tree(oid)
    data = card_data(ctx, files) or {}
    info = {
        "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24], "id": repo.id, "author": repo.namespace,
        "sha": oid, "private": repo.private, "gated": repo.gated or False, "disabled": False,
        "lastModified": iso(ctx.storage.commit_info(oid).date), "createdAt": iso(repo.created_at),
        "downloads": downloads(ctx.storage, repo), "likes": ctx.hub.likes.count(repo),
        "tags": derive_tags(repo.type, data)[0],  # the Hub's tags: the card's own and those its metadata implies
        "cardData": data or None,
        "siblings": [_sibling(e) for e in sorted(files.values(), key=lambda e: e.path)],
        "usedStorage": sum(e.size for e in files.values()),
    }
    if repo.type == "model":
        info.update(modelId=repo.id, library_name=data.get("library_name"), pipeline_tag=data.get("pipeline_tag"))
    if repo.type == "space":
        info.update(ctx.hub.space_info(repo, ctx.base_url))
    return info


def _sibling(e: FileEntry) -> dict:
    s = {"rfilename": e.path, "size": e.size, "blobId": e.sha1}
    if e.lfs:
        s["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
    return s


@router.add("GET", f"/api/{T}/{{ns}}/{{name}}")
@router.add("GET", f"/api/{T}/{{ns}}/{{name}}/revision/{{rev*}}")
async def info(ctx: Ctx) -> Response:
    repo = repo_for_read(ctx, _type(ctx), _rid(ctx))
    oid, _ = ctx.storage.resolve(repo, ctx.params.get("rev") or "main")
    return JSONResponse(repo_info(ctx, repo, oid))


@router.add("GET", f"/api/{T}")
async def list_repos(ctx: Ctx) -> Response:
    """A page of the Hub's listing (localhub/listing_query.py), `Link: rel="next"` when more match."""
    params = ctx.request.query_params
    q = listing_query.parse(params, _type(ctx))
    with ctx.storage.lock:
        rows, more = listing_query.page(ctx.storage.db, q, readable_namespaces(ctx))
    # The Hub's default items are compact; `full`, `cardData`, `config` or `expand` ask for the whole info.
    full = any(k in params for k in ("full", "cardData", "config", "expand", "expand[]"))
    out = []
    for row in rows:
        if not full:
            out.append(listing_query.compact(row))
            continue
        repo = ctx.storage.get_repo(row["type"], f"{row['namespace']}/{row['name']}")
        if repo is not None and can_read(ctx, repo):
            out.append(repo_info(ctx, repo, row["sha"]))
    headers = {"Link": listing_query.next_link(f"{ctx.base_url}{ctx.request.url.path}", params, q)} if more else {}
    return JSONResponse(out, headers=headers)


def readable_namespaces(ctx: Ctx) -> list[str]:
    """The namespaces (lowercase) whose private repos the caller sees: its own and its orgs', as `can_read` says."""
    if ctx.user is None:
        return []
    names = [ctx.user.name] + [o["name"] for o, _ in ctx.hub.teams.orgs_of(ctx.user.name)]
    return [n.lower() for n in names if namespace_role(ctx, n) is not None]


def tree_item(e: FileEntry) -> dict:
    item = {"type": "file", "oid": e.sha1, "size": e.size, "path": e.path}
    if e.lfs:
        item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
    return item


def dir_item(path: str, files: dict[str, FileEntry]) -> dict:
    inside = sorted(e.sha1 for p, e in files.items() if p.startswith(path + "/"))
    return {"type": "directory", "oid": hashlib.sha1("".join(inside).encode()).hexdigest(), "size": 0, "path": path}


def directories(files: dict[str, FileEntry]) -> set[str]:
    dirs = set()
    for p in files:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dirs


@router.add("GET", f"/api/{T}/{{ns}}/{{name}}/tree/{{rev}}/{{path*}}")
async def tree(ctx: Ctx) -> Response:
    repo = repo_for_read(ctx, _type(ctx), _rid(ctx))
    oid, _ = ctx.storage.resolve(repo, ctx.params["rev"])
    files = ctx.storage.tree(oid)
    dirs = directories(files)
    base = ctx.params.get("path", "").strip("/")
    if base and base not in dirs:
        raise HubError(404, "EntryNotFound", f"{base} does not exist on {ctx.params['rev']}")
    recursive = ctx.request.query_params.get("recursive", "").lower() in ("1", "true")
    prefix = base + "/" if base else ""
    depth = prefix.count("/")

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or path.count("/") == depth)

    items = [dir_item(d, files) for d in sorted(dirs) if wanted(d)]
    items += [tree_item(e) for p, e in sorted(files.items()) if wanted(p)]
    return JSONResponse(_expanded(ctx, oid, items, ctx.request.query_params.get("expand")))


def _expanded(ctx: Ctx, oid: str, items: list[dict], expand: str | None) -> list[dict]:
    """With `expand`, each item gets `lastCommit` (the newest commit that changed it), as the Hub's do."""
    if str(expand).lower() not in ("1", "true"):
        return items
    found = last_commits(ctx.storage, oid, [i["path"] for i in items])
    for item in items:
        c = found[item["path"]]
        item["lastCommit"] = {"id": c.oid, "title": c.title, "date": iso(c.date)}
    return items


@router.add("POST", f"/api/{T}/{{ns}}/{{name}}/paths-info/{{rev}}")
async def paths_info(ctx: Ctx) -> Response:
    repo = repo_for_read(ctx, _type(ctx), _rid(ctx))
    oid, _ = ctx.storage.resolve(repo, ctx.params["rev"])
    if ctx.request.headers.get("content-type", "").startswith("application/json"):
        form = await ctx.json()
        paths, expand = field(form, "paths", list, []), form.get("expand")
    else:  # the clients send a form: paths=a&paths=b&expand=true
        form = parse_qs((await ctx.request.body()).decode("utf-8", errors="replace"))
        paths, expand = form.get("paths", []), (form.get("expand") or [None])[0]
    if not all(isinstance(p, str) for p in paths):
        raise HubError(400, None, "paths must be a list of strings")
    files = ctx.storage.tree(oid)
    dirs = directories(files)
    out = []
    for p in paths:
        p = p.strip("/")
        if p in files:
            out.append(tree_item(files[p]))
        elif p in dirs:
            out.append(dir_item(p, files))
    return JSONResponse(_expanded(ctx, oid, out, expand))


@router.add("GET", f"/api/{T}/{{ns}}/{{name}}/refs")
async def refs(ctx: Ctx) -> Response:
    repo = repo_for_read(ctx, _type(ctx), _rid(ctx))
    r = ctx.storage.refs(repo)
    body = {
        "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in r["branch"].items()],
        "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in r["tag"].items()],
        "converts": [],
    }
    if ctx.request.query_params.get("include_prs"):
        body["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o}
                                for n, o in sorted(r["pr"].items(), key=lambda kv: int(kv[0]))]
    return JSONResponse(body)


@router.add("GET", f"/api/{T}/{{ns}}/{{name}}/commits/{{rev}}")
async def commits(ctx: Ctx) -> Response:
    repo = repo_for_read(ctx, _type(ctx), _rid(ctx))
    oid, _ = ctx.storage.resolve(repo, ctx.params["rev"])
    formatted = "formatted" in ctx.request.query_params.getlist("expand[]")
    out = []
    for c in ctx.storage.history(oid):
        item = {"id": c.oid, "title": c.title, "message": c.message, "date": iso(c.date),
                "authors": [{"user": c.author}]}
        if formatted:  # the Hub's rendered HTML; plain text escaped is what a markdown title renders to
            item["formatted"] = {"title": html.escape(c.title), "message": html.escape(c.message)}
        out.append(item)
    return JSONResponse(out)


def _ref_name(name: object) -> str:
    """A branch or tag name git would take; a 40-hex name would shadow commit shas in `resolve`."""
    if (not isinstance(name, str) or not name or name.startswith(("/", "-", "refs/")) or name.endswith((".", "/"))
            or any(c in name for c in " ~^:?*[\\") or ".." in name or "//" in name or SHA_RE.match(name)):
        raise HubError(400, None, f"Invalid reference name: {str(name)[:100]!r}")
    return name


@router.add("POST,DELETE", f"/api/{T}/{{ns}}/{{name}}/branch/{{branch}}")
async def branch(ctx: Ctx) -> Response:
    repo = repo_for_write(ctx, _type(ctx), _rid(ctx))
    name = ctx.params["branch"]
    if ctx.request.method == "DELETE":
        if name == "main":
            raise HubError(403, None, "Cannot delete refs/heads/main: it is the repo's default branch")
        return await _set_ref(ctx, repo, "branch", name, None)
    body = await ctx.json() if await ctx.request.body() else {}
    _ref_name(name)
    oid, _ = ctx.storage.resolve(repo, field(body, "startingPoint", str) or "main")
    return await _set_ref(ctx, repo, "branch", name, oid)


@router.add("POST", f"/api/{T}/{{ns}}/{{name}}/tag/{{rev}}")
async def create_tag(ctx: Ctx) -> Response:
    repo = repo_for_write(ctx, _type(ctx), _rid(ctx))
    body = await ctx.json()
    oid, _ = ctx.storage.resolve(repo, ctx.params["rev"])  # the Hub's order: a missing revision is a 404 first
    return await _set_ref(ctx, repo, "tag", _ref_name(body.get("tag")), oid)


@router.add("DELETE", f"/api/{T}/{{ns}}/{{name}}/tag/{{tag}}")
async def delete_tag(ctx: Ctx) -> Response:
    repo = repo_for_write(ctx, _type(ctx), _rid(ctx))
    return await _set_ref(ctx, repo, "tag", ctx.params["tag"], None)


async def _set_ref(ctx: Ctx, repo, kind: str, name: str, oid: str | None) -> Response:
    """Point (or, with None, delete) a branch or tag, and tell the webhooks."""
    ctx.storage.set_ref(repo, kind, name, oid)
    prefix = "refs/heads" if kind == "branch" else "refs/tags"
    await ctx.hub.on_ref_change(repo, "create" if oid else "delete", f"{prefix}/{name}", oid)
    return JSONResponse({})
