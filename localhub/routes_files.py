"""File routes: resolve (downloads, Range), preupload, the LFS batch API with one-time upload hrefs, NDJSON commits.

Who may push: a writer of the repo's namespace to any branch; any signed-in reader with a write token to a new pull
request (`?create_pr=1`) or to `refs/pr/N` of a PR they opened (localhub/discussions.py). LFS objects are accepted
from any such reader: they are content-addressed and only reach a repo through a commit, which is checked.

LFS by repo: blobs are stored once per content, but a sha256 is never a key to them. An object is "already there"
(the batch answer without an upload action) only if a repo the caller can download from holds it; otherwise the
caller uploads the bytes (the PUT checks their sha256), which records that this user holds them. A commit may name an
LFS object only on the same terms: held by a repo the writer can read (and, if gated, download), or uploaded by the
writer. So a private file's sha256 (hubflow publishes weights fingerprints) gets nobody its bytes.

Limits: a regular (non-LFS) file in a commit must be under 10 MB, as on the Hub (413 otherwise: bigger files go
through LFS); the commit body is read line by line (one file in memory at a time) and is at most
$LOCALHUB_MAX_COMMIT_BYTES (default 1 GiB; app.py answers 413 beyond, as for every other body limit).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import time
from typing import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse, JSONResponse, Response

from . import history
from .http import REPO_PREFIX, TYPE_OF_PLURAL, Ctx, Router, can_read, can_write, check_write, field, repo_for_read
from .ignore import matcher
from .storage import SHA256_RE, FileEntry, HubError, Repo, check_path, check_sha256, git_sha1, lfs_pointer

router = Router()
T = "{t:models|datasets|spaces}"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub's rule: 10 MB and up always goes to LFS
UPLOAD_TTL = 3600
# One NDJSON line of a commit: a regular file just under the threshold, base64-encoded, plus room for its path.
MAX_COMMIT_LINE = (LFS_THRESHOLD + 2) // 3 * 4 + 64 * 1024


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
    gitignore = field(body, "gitIgnore", str)
    if gitignore is None and ".gitignore" in files:
        gitignore = ctx.storage.blob_path(files[".gitignore"].sha256).read_text(errors="replace")
    ignored = matcher(gitignore) if isinstance(gitignore, str) else (lambda path: False)
    out = []
    for f in field(body, "files", list, []):
        try:
            path, size = str(f["path"]), int(f.get("size") or 0)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise HubError(400, None, "preupload wants files: [{path, size, sample}]") from None
        lfs = size >= LFS_THRESHOLD or _is_lfs_path(path, patterns)
        remote = files.get(path)
        # The client drops a file whose remote oid equals its local one: sha256 for LFS, git sha1 for regular.
        remote_oid = None if remote is None else (remote.sha256 if remote.lfs else remote.sha1)
        out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": ignored(path),
                    "oid": remote_oid})
    return JSONResponse({"files": out, "commitOid": oid})


def _sign(ctx: Ctx, user: str, oid: str, size: int, expires: int, nonce: str) -> str:
    msg = f"{user}:{oid}:{size}:{expires}:{nonce}".encode()
    return hmac.new(ctx.hub.secret, msg, hashlib.sha256).hexdigest()


def _can_download(ctx: Ctx, repo: Repo) -> bool:
    if not can_read(ctx, repo):
        return False
    try:
        ctx.hub.gates.check(ctx, repo)
    except HubError:
        return False
    return True


def may_reference(ctx: Ctx, repo: Repo, oid: str) -> bool:
    """May the caller make `repo` name LFS object `oid`? (see "LFS by repo" in the module docstring)"""
    if ctx.user is not None and ctx.storage.uploaded_by(oid, ctx.user.name):
        return True
    if history.uploaded_through(ctx.storage, repo.rid, oid):  # its batch endpoint took or granted the object
        return True
    return any(h.rid == repo.rid or _can_download(ctx, h) for h in ctx.storage.holders(oid))


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
        for obj in field(body, "objects", list, []):
            oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
            if not isinstance(oid, str) or not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": str(oid)[:100], "size": size if isinstance(size, int) else None,
                                "error": {"code": 422,
                                          "message": "oid must be a lowercase hex sha256, size an int >= 0"}})
                continue
            if ctx.storage.has_blob(oid) and may_reference(ctx, repo, oid):
                history.record_repo_upload(ctx.storage, repo.rid, oid)  # the repo's now: its client will commit it
                objects.append({"oid": oid, "size": size})  # no actions: the client skips stored objects
                continue
            user = ctx.user.name  # type: ignore[union-attr]  (signed in: checked above)
            # The nonce (signed) starts with the repo's rid: the PUT records which repo the object was uploaded
            # through, which makes it that repo's to purge (localhub/history.py).
            expires, nonce = int(time.time()) + UPLOAD_TTL, f"{repo.rid}-{secrets.token_hex(8)}"
            sig = _sign(ctx, user, oid, size, expires, nonce)
            # The PUT carries no Authorization: the href authorises itself, once, for this user, oid and size only.
            href = f"{ctx.base_url}/_localhub/lfs/{user}/{oid}/{size}/{expires}/{nonce}/{sig}"
            objects.append({"oid": oid, "size": size, "authenticated": True,
                            "actions": {"upload": {"href": href, "expires_in": UPLOAD_TTL}}})
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")


@router.add("PUT", "/_localhub/lfs/{user}/{oid}/{size}/{expires}/{nonce}/{sig}", route_class="upload")
async def lfs_put(ctx: Ctx) -> Response:
    p = ctx.params
    try:
        oid, size, expires = check_sha256(p["oid"]), int(p["size"]), int(p["expires"])
    except (ValueError, HubError):
        raise HubError(403, None, "Invalid upload URL") from None
    if not hmac.compare_digest(_sign(ctx, p["user"], oid, size, expires, p["nonce"]).encode(),
                               p["sig"].encode(errors="replace")) or expires < time.time():
        raise HubError(403, None, "Invalid or expired upload URL")
    ctx.limit_body(size)  # more bytes than the URL was signed for: 413 as they arrive
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
        ctx.storage.record_upload(oid, p["user"])
        if p["nonce"].partition("-")[0].isdigit():
            history.record_repo_upload(ctx.storage, int(p["nonce"].partition("-")[0]), oid)
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
    entries: list[FileEntry] = []  # in payload order
    deletes: list[str] = []
    async for line in _ndjson_lines(ctx):
        try:
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if not isinstance(value, dict):
                raise TypeError(f"the value of a {key!r} line must be an object")
            if key == "header":
                header = value
            elif key == "file":
                content, path = value["content"], check_path(value["path"])
                data = (base64.b64decode(content, validate=True) if value.get("encoding") == "base64"
                        else content.encode())
                del content, item, value
                if len(data) >= LFS_THRESHOLD:
                    raise _too_big(path, len(data))
                # One fsync per regular file: off the event loop, so parallel downloads keep flowing meanwhile.
                sha256, sha1 = await run_in_threadpool(ctx.storage.put_bytes, data)
                entries.append(FileEntry(path, sha256, sha1, len(data), False))
            elif key == "lfsFile":
                oid, path = check_sha256(value["oid"]), check_path(value["path"])
                blob = ctx.storage.blob_path(oid)
                # A copy (CommitOperationCopy) names a stored object by oid alone: its size is the blob's.
                stored = blob.stat().st_size if blob.is_file() else -1
                size = int(value["size"]) if value.get("size") is not None else stored
                # The same answer whether the object is absent or only held where the writer cannot read it.
                if stored < 0 or stored != size or not may_reference(ctx, repo, oid):
                    raise HubError(422, None, f"LFS object {oid} for {path} was never uploaded (by you, or to a repo "
                                              "you can read): upload it through the LFS batch API first")
                entries.append(FileEntry(path, oid, git_sha1(lfs_pointer(oid, size)), size, True))
            elif key in ("deletedFile", "deletedFolder"):
                path = value["path"]
                if not isinstance(path, str) or not path.strip("/"):
                    raise TypeError(f"{key} wants a path (a string), got {path!r}"[:200])
                deletes.append(path)
            else:
                raise HubError(400, None, f"Unsupported commit operation: {str(key)[:100]!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # bad JSON, base64, field: the client's fault
            raise HubError(400, None, f"Malformed commit payload: {type(err).__name__}: {str(err)[:200]}") from None
    for key in ("summary", "description", "parentCommit"):
        if header.get(key) is not None and not isinstance(header[key], str):
            raise HubError(400, None, f"Malformed commit payload: header.{key} must be a string")
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


def _too_big(path: str, size: int) -> HubError:
    return HubError(413, None, f"{path} is {size} bytes: a regular file in a commit must be under {LFS_THRESHOLD} "
                               "bytes (10 MB), as on the Hub; bigger files go through LFS (preupload answers "
                               "uploadMode \"lfs\" for them)")


_PATH_RE = re.compile(rb'"path"\s*:\s*"((?:[^"\\]|\\.){1,1000})"')


async def _ndjson_lines(ctx: Ctx) -> AsyncIterator[bytes]:
    """The commit body's non-empty lines as they arrive: one line in memory at a time, each at most
    MAX_COMMIT_LINE bytes (a longer one is a regular file over the limit: 413, naming its path when it can)."""
    buf = bytearray()
    stream = ctx.request.stream()
    async for chunk in stream:
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[:end + 1]
            if line.strip():
                yield line
        if len(buf) > MAX_COMMIT_LINE:
            raise await _oversized_line(stream, buf)
    if buf.strip():
        yield bytes(buf)


async def _oversized_line(stream: AsyncIterator[bytes], buf: bytearray) -> HubError:
    """Skip to the end of an oversized line, keeping its head and tail, to say which file it was."""
    head, tail, length = bytes(buf[:4096]), bytes(buf[-4096:]), len(buf)
    if b"\n" not in buf:
        async for chunk in stream:
            end = chunk.find(b"\n")
            part = chunk if end < 0 else chunk[:end]
            length += len(part)
            tail = (tail + part)[-4096:]
            if end >= 0:
                break
    found = _PATH_RE.search(tail) or _PATH_RE.search(head)
    try:
        path = json.loads(b'"' + found.group(1) + b'"') if found else "a file"
    except ValueError:
        path = "a file"
    return _too_big(str(path)[:300], length * 3 // 4)
