"""`POST /api/{t}s/{ns}/{name}/duplicate {repository, visibility?, hardware?, secrets?, variables?, ...}`.

`HfApi.duplicate_repo`: a new repo whose `main` holds the source's `main` files (the blobs are shared, nothing is
copied on disk). The caller must be able to read the source, its files included (a gated source needs access), and
to write the target's namespace; the target id follows the creation rules (localhub/repo_ids.py). The copy keeps the
source's visibility unless `visibility` says otherwise, as on the Hub; a Space's settings come from the body, as at
creation (secrets are never copied). Answers `{"url"}`; 409 with the url when the target exists (`exist_ok`).
History is not copied: the copy has its initial commit and one commit with the files.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from .http import (
    REPO_PREFIX,
    TYPE_OF_PLURAL,
    Ctx,
    HubError,
    Moved,
    Router,
    can_read,
    canonical_namespace,
    check_write,
    field,
    repo_for_read,
)
from .repo_ids import check_new_repo_id

router = Router()


@router.add("POST", "/api/{t:models|datasets|spaces}/{ns}/{name}/duplicate")
async def duplicate(ctx: Ctx) -> Response:
    type_ = TYPE_OF_PLURAL[ctx.params["t"]]
    try:
        src = repo_for_read(ctx, type_, f"{ctx.params['ns']}/{ctx.params['name']}")
    except Moved as moved:  # a renamed source: duplicate what it is now (a 307 would resend the body, also fine)
        src = repo_for_read(ctx, type_, moved.new_id)
    ctx.hub.gates.check(ctx, src)  # copying the files is downloading them
    body = await ctx.json()
    target = check_new_repo_id(field(body, "repository", str) or "")
    ns, _, name = target.partition("/")
    url = f"{ctx.base_url}/{REPO_PREFIX[type_]}{target}"
    existing = ctx.storage.get_repo(type_, target)
    if existing is not None and can_read(ctx, existing):
        raise HubError(409, None, f"You already created this {type_} repo: {existing.id}", {"url": url})
    user = check_write(ctx, ns)
    target = f"{canonical_namespace(ctx, ns)}/{name}"
    visibility = field(body, "visibility", str)
    if visibility not in (None, "public", "private"):
        raise HubError(400, None, f"visibility is 'public' or 'private', not {visibility[:50]!r}")
    private = src.private if visibility is None else visibility == "private"
    head, _ = ctx.storage.resolve(src, "main")
    files = ctx.storage.tree(head)
    repo = ctx.storage.create_repo(type_, target, private, user.name, sdk=src.sdk)
    initial, _ = ctx.storage.resolve(repo, "main")
    gone = [p for p in ctx.storage.tree(initial) if p not in files]
    oid, _ = ctx.storage.commit(repo, "main", f"Duplicate from {src.id}", "", user.name, files.values(), gone)
    await ctx.hub.on_repo_created(repo, body)
    await ctx.hub.on_commit(repo, "main", oid)
    return JSONResponse({"url": f"{ctx.base_url}/{REPO_PREFIX[type_]}{repo.id}"})
