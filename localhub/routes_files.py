"""File routes: resolve (downloads, Range), preupload, the LFS batch API with one-time upload hrefs, NDJSON commits.

Who may push: a writer of the repo's namespace to any branch; any signed-in reader with a write token to a new pull
request (`?create_pr=1`) or to `refs/pr/N` of a PR they opened (localhub/discussions.py). LFS objects are accepted
from any such reader: they are content-addressed and only reach a repo through a commit, which is checked.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import secrets
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse, JSONResponse, Response

from .http import REPO_PREFIX, TYPE_OF_PLURAL, Ctx, Router, can_write, check_write, repo_for_read
from .ignore import matcher
from .storage import SHA256_RE, FileEntry, HubError, Repo, check_path, check_sha256, git_sha1, lfs_pointer

router = Router()
T = "{t:models|datasets|spaces}"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub's rule: 10 MB and up always goes to LFS
UPLOAD_TTL = 3600


class BlobResponse(FileResponse):
    chunk_size = 1 << 20  # 1 MiB reads: 64 KiB chunks cap loopback downloads well below disk speed


def _resolve_target(ctx: Ctx, type_: str) -> tuple[Repo, str, dict[str, FileEntry]]:
    repo = repo_for_read(ctx, type_, f"{ctx.params['ns']}/{ctx.params['name']}")
    ctx.hub.gates.check(ctx, repo)  # a gated repo's files need accepted access (localhub/gating.py)
    oid, _ = ctx.storage.resolve(repo, ctx.params["rev"])
    return repo, oid, ctx.storage.tree(oid)


async def _resolve(ctx: Ctx, type_: str) -> Response:
    repo, oid, files = _resolve_target(ctx, type_)
    path = ctx.params["path"]
    entry = files.get(path)
    if entry is None:
        # EntryNotFound (with X-Repo-Commit) is what lets the clients cache "absent" and probe optional files.
        raise HubError(404, "EntryNotFound", f"{path} does not exist on {ctx.params['rev']}")
    headers = {
        "X-Repo-Commit": oid,
        "ETag": f'"{entry.sha256 if entry.lfs else entry.sha1}"',
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
    }
    if entry.lfs:
        headers["X-Linked-Size"] = str(entry.size)
        headers["X-Linked-ETag"] = f'"{entry.sha256}"'
    await ctx.hub.on_download(repo, path)
    return BlobResponse(ctx.storage.blob_path(entry.sha256), headers=headers)


for _prefix, _type in (("", "model"), ("datasets/", "dataset"), ("spaces/", "space")):

    async def _handler(ctx: Ctx, _type: str = _type) -> Response:
        return await _resolve(ctx, _type)

    router.add("GET", f"/{_prefix}{{ns}}/{{name}}/resolve/{{rev}}/{{path*}}", route_class="download")(_handler)


def _lfs_patterns(ctx: Ctx, files: dict[str, FileEntry]) -> list[str]:
    entry = files.get(".gitattributes")
    if not entry:
        return []
    pats = []
    for line in ctx.storage.blob_path(entry.sha256).read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and "filter=lfs" in parts[1:]:
            pats.append(parts[0])
    return pats


def _is_lfs_path(path: str, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    for pat in patterns:
        target = path if "/" in pat else name
        if fnmatch.fnmatch(target, pat.replace("**/", "*")):
            return True
    return False


def _create_pr(ctx: Ctx) -> bool:
    return ctx.request.query_params.get("create_pr", "").lower() in ("1", "true")


def repo_for_push(ctx: Ctx, rev: str, create_pr: bool) -> Repo:
    """The repo if the caller may push to `rev` (see the module docstring); the Hub's 401/403 otherwise."""
    repo = repo_for_read(ctx, TYPE_OF_PLURAL[ctx.params["t"]], f"{ctx.params['ns']}/{ctx.params['name']}")
    if can_write(ctx, repo):
        return repo
    user = ctx.user
    if user is not None and user.role == "write":
        if create_pr:
            return repo
        if rev.startswith("refs/pr/"):
            pr = ctx.hub.discussions.get(repo, rev[8:])
            if pr["author"].lower() == user.name.lower():
                return repo
    check_write(ctx, repo.namespace)  # raises the Hub's 401 or 403
    return repo


@router.add("POST", f"/api/{T}/{{ns}}/{{name}}/preupload/{{rev}}", route_class="upload")
async def preupload(ctx: Ctx) -> Response:
    repo = repo_for_push(ctx, ctx.params["rev"], _create_pr(ctx))
    oid, _ = ctx.storage.resolve(repo, ctx.params["rev"])
    files = ctx.storage.tree(oid)
    patterns = _lfs_patterns(ctx, files)
    body = await ctx.json()
    # The client sends the .gitignore it is committing as `gitIgnore`; without one, the repo's own applies.
    gitignore = body.get("gitIgnore")
    if gitignore is None and ".gitignore" in files:
        gitignore = ctx.storage.blob_path(files[".gitignore"].sha256).read_text(errors="replace")
    ignored = matcher(gitignore) if isinstance(gitignore, str) else (lambda path: False)
    out = []
    for f in body.get("files", []):
        try:
            path, size = str(f["path"]), int(f.get("size") or 0)
        except (KeyError, TypeError, ValueError):
            raise HubError(400, None, "preupload wants files: [{path, size, sample}]") from None
        lfs = size >= LFS_THRESHOLD or _is_lfs_path(path, patterns)
        remote = files.get(path)
        # The client drops a file whose remote oid equals its local one: sha256 for LFS, git sha1 for regular.
        remote_oid = None if remote is None else (remote.sha256 if remote.lfs else remote.sha1)
        out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": ignored(path),
                    "oid": remote_oid})
    return JSONResponse({"files": out, "commitOid": oid})


def _sign(ctx: Ctx, oid: str, size: int, expires: int, nonce: str) -> str:
    msg = f"{oid}:{size}:{expires}:{nonce}".encode()
    return hmac.new(ctx.hub.secret, msg, hashlib.sha256).hexdigest()


for _prefix in ("", "datasets/", "spaces/"):

    @router.add("POST", f"/{_prefix}{{ns}}/{{namegit}}/info/lfs/objects/batch", route_class="upload")
    async def lfs_batch(ctx: Ctx, _prefix: str = _prefix) -> Response:
        name = ctx.params["namegit"].removesuffix(".git")
        type_ = {"": "model", "datasets/": "dataset", "spaces/": "space"}[_prefix]
        repo = repo_for_read(ctx, type_, f"{ctx.params['ns']}/{name}")
        if not can_write(ctx, repo) and (ctx.user is None or ctx.user.role != "write"):
            check_write(ctx, repo.namespace)  # a PR's objects come from signed-in readers with a write token
        body = await ctx.json()
        if body.get("operation") != "upload":
            raise HubError(400, None, "localhub's LFS batch API serves uploads only; download through /resolve")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": str(oid), "size": size,
                                "error": {"code": 422, "message": "oid must be a lowercase hex sha256, size an int >= 0"}})
                continue
            if ctx.storage.has_blob(oid):
                objects.append({"oid": oid, "size": size})  # no actions: the client skips stored objects
                continue
            expires, nonce = int(time.time()) + UPLOAD_TTL, secrets.token_hex(8)
            sig = _sign(ctx, oid, size, expires, nonce)
            # The PUT carries no Authorization: the href authorises itself, once, for this oid and size only.
            href = f"{ctx.base_url}/_localhub/lfs/{oid}/{size}/{expires}/{nonce}/{sig}"
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {"upload": {"href": href, "expires_in": UPLOAD_TTL}}})
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")


@router.add("PUT", "/_localhub/lfs/{oid}/{size}/{expires}/{nonce}/{sig}", route_class="upload")
async def lfs_put(ctx: Ctx) -> Response:
    p = ctx.params
    try:
        oid, size, expires = check_sha256(p["oid"]), int(p["size"]), int(p["expires"])
    except ValueError:
        raise HubError(403, None, "Invalid upload URL") from None
    if not hmac.compare_digest(_sign(ctx, oid, size, expires, p["nonce"]), p["sig"]) or expires < time.time():
        raise HubError(403, None, "Invalid or expired upload URL")
    if p["nonce"] in ctx.hub.used_nonces:
        raise HubError(403, None, "This upload URL was already used")
    # Claimed for the duration of the PUT (no two at once), given back unless the blob got stored: a client whose
    # PUT failed half-way may retry the same href.
    ctx.hub.used_nonces.add(p["nonce"])
    tmp, f = ctx.storage.new_tmp()
    h, n, stored = hashlib.sha256(), 0, False
    try:
        async for chunk in ctx.request.stream():
            h.update(chunk)
            f.write(chunk)
            n += len(chunk)
            if n > size:
                break
        if h.hexdigest() != oid or n != size:
            raise HubError(400, None, f"Uploaded content does not match oid {oid} / size {size} (got {n}+ bytes)")
        # fsync of a big file takes a while: off the event loop, so downloads and API calls keep flowing.
        await run_in_threadpool(ctx.storage.adopt_tmp, tmp, f, oid)
        stored = True
    except ClientDisconnect:
        # Handled here rather than as a 500, whose log line would carry this URL's one-time signature.
        raise HubError(400, None, "Client disconnected during the upload") from None
    finally:
        if not f.closed:
            f.close()
        tmp.unlink(missing_ok=True)
        if not stored:
            ctx.hub.used_nonces.discard(p["nonce"])
    return JSONResponse({})


@router.add("POST", f"/api/{T}/{{ns}}/{{name}}/commit/{{rev}}", route_class="commit")
async def commit(ctx: Ctx) -> Response:
    type_ = TYPE_OF_PLURAL[ctx.params["t"]]
    create_pr = _create_pr(ctx)
    repo = repo_for_push(ctx, ctx.params["rev"], create_pr)
    _, branch = ctx.storage.resolve(repo, ctx.params["rev"])
    if create_pr and (branch is None or branch.startswith("refs/pr/")):
        # A PR targets a branch: a sha, a tag or another PR is "not found" as a branch, as on the Hub.
        raise HubError(404, "RevisionNotFound",
                       f"Invalid rev id: {ctx.params['rev']} (a pull request targets a branch)")
    if branch is None:
        raise HubError(400, None, f"Invalid rev id: {ctx.params['rev']} is not a branch (commits go to a branch)")
    if branch.startswith("refs/pr/") and ctx.hub.discussions.get(repo, branch[8:])["status"] == "merged":
        raise HubError(400, None, f"{branch} is merged: open a new pull request")
    header: dict = {}
    adds: list[FileEntry | tuple[str, bytes]] = []  # in payload order; (path, bytes) for regular files
    deletes: list[str] = []
    raw = await ctx.request.body()
    try:
        items = [json.loads(line) for line in raw.splitlines() if line.strip()]
        for item in items:
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                data = base64.b64decode(content, validate=True) if value.get("encoding") == "base64" else content.encode()
                adds.append((check_path(value["path"]), data))
            elif key == "lfsFile":
                oid, path = check_sha256(value["oid"]), check_path(value["path"])
                blob = ctx.storage.blob_path(oid)
                # A copy (CommitOperationCopy) names a stored object by oid alone: its size is the blob's.
                stored = blob.stat().st_size if blob.is_file() else -1
                size = int(value["size"]) if value.get("size") is not None else stored
                if stored < 0 or stored != size:
                    raise HubError(422, None, f"LFS object {oid} for {path} was never uploaded")
                adds.append(FileEntry(path, oid, git_sha1(lfs_pointer(oid, size)), size, True))
            elif key in ("deletedFile", "deletedFolder"):
                deletes.append(value["path"])
            else:
                raise HubError(400, None, f"Unsupported commit operation: {key}")
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # bad JSON, base64 or field: the client's fault
        raise HubError(400, None, f"Malformed commit payload: {type(err).__name__}: {str(err)[:200]}") from None

    def store(op: FileEntry | tuple[str, bytes]) -> FileEntry:
        if isinstance(op, FileEntry):
            return op
        path, data = op
        return FileEntry(path, *ctx.storage.put_bytes(data), len(data), False)

    # One fsync per regular file: off the event loop, so parallel downloads keep flowing meanwhile.
    entries = await run_in_threadpool(lambda: [store(op) for op in adds])
    author = ctx.user.name if ctx.user else "anonymous"
    title, description = header.get("summary") or "Upload", header.get("description") or ""
    pr = None
    if create_pr:  # the PR opens on the branch's head, then the commit lands on its ref
        pr = ctx.hub.discussions.open(repo, author, title, description, is_pr=True, target=branch, status="open")
    ref = f"refs/pr/{pr['num']}" if pr else branch
    try:
        oid, created = ctx.storage.commit(repo, ref, title, description, author, entries, deletes,
                                          parent_commit=header.get("parentCommit"))
    except BaseException:
        if pr:
            ctx.hub.discussions.drop(repo, pr["num"])
        raise
    if created:
        await ctx.hub.on_commit(repo, ref, oid)
    url = f"{ctx.base_url}/{REPO_PREFIX[type_]}{repo.id}/commit/{oid}"
    body = {"success": True, "commitOid": oid, "commitUrl": url, "commitMessage": title, "hookOutput": ""}
    if ref.startswith("refs/pr/"):
        num = int(ref[8:])
        if created:
            ctx.hub.discussions.add_event(repo, num, "commit", author, {"subject": title, "oid": oid})
        if pr:
            body["pullRequestUrl"] = ctx.hub.discussions.url(repo, num, ctx.base_url)
            await ctx.hub.discussions.notify(repo, num, "create")
    return JSONResponse(body)
