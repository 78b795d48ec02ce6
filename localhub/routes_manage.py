"""Repo management routes: move (rename or transfer, with redirects), super-squash, the LFS files listing and their
permanent deletion, and the storage listing of a namespace's repos.

    POST /api/repos/move {fromRepo, toRepo, type}        write access to both namespaces; the old id redirects (307)
    POST /api/{t}s/{ns}/{name}/super-squash/{rev} {message}      one commit with the ref's files, no parent
    GET  /api/{t}s/{ns}/{name}/lfs-files                         [{fileOid, oid, filename, size, ref, pushedAt}]
    POST /api/{t}s/{ns}/{name}/lfs-files/batch {deletions: {sha: [...], rewriteHistory}}
    GET  /api/settings/repositories, /api/organizations/{org}/settings/repositories    {id, type, visibility, storage}
All but the listings need write access; permanent deletion rewrites history in place (commit ids stay as they are,
unlike the Hub's) and is refused without `rewriteHistory`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from . import history
from .http import (
    NAME_RE,
    NAMESPACE_RE,
    REPO_PREFIX,
    TYPE_OF_PLURAL,
    Ctx,
    HubError,
    Moved,
    Router,
    canonical_namespace,
    check_write,
    field,
    iso,
    repo_for_read,
    repo_for_write,
)
from .repo_ids import check_new_repo_id
from .storage import check_sha256

router = Router()
T = "{t:models|datasets|spaces}"


def _repo(ctx: Ctx, write: bool = True):
    type_, rid = TYPE_OF_PLURAL[ctx.params["t"]], f"{ctx.params['ns']}/{ctx.params['name']}"
    return repo_for_write(ctx, type_, rid) if write else repo_for_read(ctx, type_, rid)


@router.add("POST", "/api/repos/move")
async def move(ctx: Ctx) -> Response:
    body = await ctx.json()
    type_ = field(body, "type", str) or "model"
    src, dst = field(body, "fromRepo", str) or "", field(body, "toRepo", str) or ""
    ns, _, name = dst.partition("/")
    check_new_repo_id(dst)  # the same naming rules as create (localhub/repo_ids.py)
    if type_ not in REPO_PREFIX or src.count("/") != 1 or not NAMESPACE_RE.match(ns) or not NAME_RE.match(name):
        raise HubError(400, None, f"Invalid move of {type_} {src!r} to {dst!r}: ids are namespace/name")
    try:
        repo = repo_for_write(ctx, type_, src)
    except Moved as moved:  # the body names the repo: follow an earlier rename here, no redirect to answer
        repo = repo_for_write(ctx, type_, moved.new_id)
    check_write(ctx, ns)
    new = ctx.storage.move_repo(repo, f"{canonical_namespace(ctx, ns)}/{name}")
    await ctx.hub.on_repo_moved(repo, new)
    return JSONResponse({"url": f"{ctx.base_url}/{REPO_PREFIX[type_]}{new.id}"})


@router.add("POST", f"/api/{T}/{{ns}}/{{name}}/super-squash/{{rev}}")
async def super_squash(ctx: Ctx) -> Response:
    repo = _repo(ctx)
    rev = ctx.params["rev"]
    old, ref = ctx.storage.resolve(repo, rev)
    if ref is None:
        raise HubError(400, None, f"Invalid rev id: {rev} is not a branch")
    body = await ctx.json() if await ctx.request.body() else {}
    title = field(body, "message", str) or f"Super-squash branch '{rev}' using huggingface_hub"
    oid = history.squash(ctx.storage, repo, ref, title, ctx.user.name)  # type: ignore[union-attr]
    ref_name = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
    await ctx.hub.on_ref_change(repo, "delete", ref_name, old)
    await ctx.hub.on_ref_change(repo, "create", ref_name, oid)
    return JSONResponse({"commitId": oid})


@router.add("GET", f"/api/{T}/{{ns}}/{{name}}/lfs-files")
async def lfs_files(ctx: Ctx) -> Response:
    items = history.lfs_files(ctx.storage, _repo(ctx))
    return JSONResponse([{**i, "pushedAt": iso(i["pushedAt"])} for i in items])


@router.add("POST", f"/api/{T}/{{ns}}/{{name}}/lfs-files/batch")
async def lfs_delete(ctx: Ctx) -> Response:
    repo = _repo(ctx)
    deletions = field(await ctx.json(), "deletions", dict) or {}
    shas = deletions.get("sha")
    if not isinstance(shas, list):
        raise HubError(400, None, "lfs-files/batch wants {deletions: {sha: [...], rewriteHistory: true}}")
    if not deletions.get("rewriteHistory", True):
        raise HubError(400, None, "localhub deletes LFS files by rewriting history only (rewriteHistory: true)")
    removed = history.purge_lfs(ctx.storage, repo, [check_sha256(s) for s in shas])
    return JSONResponse({"deleted": removed})


@router.add("GET", "/api/settings/repositories")
@router.add("GET", "/api/organizations/{org}/settings/repositories")
async def repositories(ctx: Ctx) -> Response:
    namespace = ctx.params.get("org") or (ctx.user.name if ctx.user else "")
    check_write(ctx, namespace)
    out = []
    for type_ in ("model", "dataset", "space"):
        for repo in ctx.storage.list_repos(type_):
            if repo.namespace.lower() != namespace.lower():
                continue
            head, _ = ctx.storage.resolve(repo, "main")
            out.append({"id": repo.id, "type": type_, "visibility": "private" if repo.private else "public",
                        "updatedAt": iso(ctx.storage.last_modified(repo)),
                        "storage": sum(e.size for e in ctx.storage.tree(head).values()), "storagePercent": 0})
    return JSONResponse(out)
