"""Webhooks for localhub, as on the Hub: `/api/settings/webhooks` CRUD, and delivery of repo events.

API (what `HfApi.create_webhook/list_webhooks/get_webhook/update_webhook/enable_webhook/disable_webhook/
delete_webhook` send): GET/POST `/api/settings/webhooks`, GET/POST/DELETE `/api/settings/webhooks/{id}`,
POST `.../{id}/enable|disable`. Single-webhook answers are `{"webhook": {...}}`, the listing a bare list. Every route
needs a write token and shows only the caller's own webhooks (another user's id is a 404). Webhooks live in the
storage's `webhooks` table, so they survive restarts; deliveries still queued when the server stops are lost.
Job webhooks (`jobSourceId`) are not supported (400). `update_webhook` always sends `watched` (an empty list when
the caller gave none), so an empty list keeps the current one.

Events: a commit (to a branch or a PR's refs/pr/N), a branch or tag created/deleted -> `{"action": "update", "scope":
"repo.content"}` with `updatedRefs`; repo created/deleted/moved -> `{"action": "create"|"delete"|"move", "scope":
"repo"}` (a move carries `movedTo`). These need "repo" in the webhook's `domains`. Discussions and pull requests
(localhub/discussions.py) -> `{"action": "create"|"update", "scope": "discussion"}` with the `discussion` object
(status, `changes.base`, `mergeCommitId` once merged), or scope "discussion.comment" with the `comment` too; these
need "discussion". A webhook fires when a watched item matches: `{type: model|dataset|space, name: "ns/name"}` or
`{type: user|org, name: ns}`, and, for a private repo, when its owner may read the repo. The body is the Hub's v3
payload (`huggingface_hub.WebhookPayload` parses it; as on the Hub the head commit is `repo.headSha`), POSTed as JSON
with `X-Webhook-Secret` when the webhook has a secret.

Delivery: a queue and a small thread pool, never the request that caused the event. A failed attempt (non-2xx or no
connection) is retried after 0.5, 1, 2, 4, 8 s, then dropped; a webhook disabled or deleted meanwhile gets no more.

Targets: a webhook URL may not point at loopback, private (RFC 1918, ULA), link-local (cloud metadata), shared,
multicast, reserved or unspecified addresses, unless the operator allows it (`--allow-private-webhooks`,
$LOCALHUB_ALLOW_PRIVATE_WEBHOOKS=1, `LocalHub(allow_private_webhooks=True)`: tests with a local receiver). Checked at
registration (a literal address, `localhost`, or a name that resolves to one: 400) and again at every delivery, which
connects to the address it checked (a name re-pointed at a private address meanwhile is not followed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import http.client
import ipaddress
import itertools
import json
import logging
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

from starlette.responses import JSONResponse, Response

from .app import Extension
from .http import REPO_PREFIX, Ctx, HubError, Router, check_write
from .storage import Repo

log = logging.getLogger("localhub")
WATCH_TYPES = ("model", "dataset", "space", "user", "org")
DOMAINS = ("repo", "discussion")
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)


def _object_id(text: str) -> str:
    """A stable 24-hex id, the shape of the Hub's object ids."""
    return hashlib.sha1(text.encode()).hexdigest()[:24]


class Webhooks(Extension):
    """CRUD routes on the storage's webhooks table, plus the delivery queue."""

    def __init__(self, hub, retry_delays: tuple[float, ...] = RETRY_DELAYS, timeout: float = 10.0):
        self.hub = hub
        self.storage = hub.storage
        self.retry_delays = retry_delays
        self.timeout = timeout
        self.queue: list[tuple[float, int, dict]] = []  # (due, seq, delivery), a heap
        self.seq = itertools.count()
        self.cond = threading.Condition()
        self.closed = False
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="localhub-webhook")
        self.thread = threading.Thread(target=self._schedule_loop, name="localhub-webhooks", daemon=True)
        self.thread.start()
        self.router = Router()
        self.router.add("GET,POST", "/api/settings/webhooks")(self._collection)
        self.router.add("GET,POST,DELETE", "/api/settings/webhooks/{wid}")(self._item)
        self.router.add("POST", "/api/settings/webhooks/{wid}/{action:enable|disable}")(self._toggle)

    # ---- API ---------------------------------------------------------------------------------------------------
    def _owned(self, ctx: Ctx) -> list[dict]:
        user = check_write(ctx, ctx.user.name if ctx.user else "")
        with self.storage.lock:
            return [h for h in self.storage.webhooks() if h["owner"] == user.name]

    def _get(self, ctx: Ctx) -> dict:
        hook = next((h for h in self._owned(ctx) if h["id"] == ctx.params["wid"]), None)
        if hook is None:
            raise HubError(404, None, f"Webhook {ctx.params['wid']} not found")
        return hook

    async def _collection(self, ctx: Ctx) -> Response:
        hooks = self._owned(ctx)
        if ctx.request.method == "GET":
            return JSONResponse([_public(h) for h in hooks])
        body = await ctx.json()
        hook = {"id": secrets.token_hex(12), "owner": ctx.user.name, "disabled": False,  # type: ignore[union-attr]
                "createdAt": time.time(), **_validated(body, partial=False)}
        await self._check_target(hook["url"])
        self.storage.put_webhook(hook)
        log.info("webhook %s created by %s", hook["id"], hook["owner"])
        return JSONResponse({"webhook": _public(hook)})

    async def _item(self, ctx: Ctx) -> Response:
        hook = self._get(ctx)
        if ctx.request.method == "DELETE":
            self.storage.delete_webhook(hook["id"])
            return JSONResponse({})
        if ctx.request.method == "POST":
            changes = _validated(await ctx.json(), partial=True)
            if "url" in changes:
                await self._check_target(changes["url"])
            hook.update(changes)
            self.storage.put_webhook(hook)
        return JSONResponse({"webhook": _public(hook)})

    async def _toggle(self, ctx: Ctx) -> Response:
        hook = self._get(ctx)
        hook["disabled"] = ctx.params["action"] == "disable"
        self.storage.put_webhook(hook)
        return JSONResponse({"webhook": _public(hook)})

    async def _check_target(self, url: str) -> None:
        """400 unless the URL's host is public (or the operator allows private targets). A name that does not
        resolve now is accepted: every delivery checks it again."""
        if self.hub.allow_private_webhooks:
            return
        host = urlsplit(url).hostname or ""
        try:
            addrs = await asyncio.wait_for(asyncio.to_thread(_resolve, host, urlsplit(url).port), 5)
        except (OSError, asyncio.TimeoutError, ValueError):
            if _is_local_name(host):
                addrs = ["127.0.0.1"]
            else:
                return
        bad = next((a for a in addrs if not _public_address(a)), None)
        if bad is not None or _is_local_name(host):
            what = "a non-public address" if bad in (None, host) else f"a name for the non-public address {bad}"
            raise HubError(400, None, f"Invalid webhook url: {host!r} is {what} (loopback, private, link-local or "
                                      "reserved). Webhooks must target a public address unless the hub's operator "
                                      "allows private ones (--allow-private-webhooks)")

    # ---- events ------------------------------------------------------------------------------------------------
    async def on_commit(self, repo: Repo, branch: str, oid: str) -> None:
        parent = self.storage.commit_info(oid).parent
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        self._emit(repo, "update", "repo.content", {"updatedRefs": [{"ref": ref, "oldSha": parent, "newSha": oid}]})

    async def on_ref_change(self, repo: Repo, change: str, ref: str, oid: str | None) -> None:
        old, new = (None, oid) if change == "create" else (oid, None)
        self._emit(repo, "update", "repo.content", {"updatedRefs": [{"ref": ref, "oldSha": old, "newSha": new}]})

    async def on_repo_created(self, repo: Repo, body: dict) -> None:
        self._emit(repo, "create", "repo", {})

    async def on_repo_deleted(self, repo: Repo) -> None:
        self._emit(repo, "delete", "repo", {})

    async def on_repo_moved(self, old: Repo, new: Repo) -> None:
        self._emit(old, "move", "repo", {"movedTo": {"name": new.id, "owner": {"id": _object_id(new.namespace)}}})

    async def on_discussion(self, repo: Repo, action: str, scope: str, discussion: dict, comment: dict | None) -> None:
        extra = {"discussion": discussion} | ({"comment": comment} if comment else {})
        self._emit(repo, action, scope, extra, domain="discussion")

    def _emit(self, repo: Repo, action: str, scope: str, extra: dict, domain: str = "repo") -> None:
        with self.storage.lock:
            hooks = [h for h in self.storage.webhooks() if not h["disabled"] and self._watches(h, repo, domain)]
        if not hooks:
            return
        try:
            head = self.storage.resolve(repo, "main")[0]
        except HubError:
            head = None
        base = self.hub.base_url
        repo_json = {
            "type": repo.type, "name": repo.id, "id": _object_id(f"{repo.type}/{repo.id}"), "private": repo.private,
            "url": {"web": f"{base}/{REPO_PREFIX[repo.type]}{repo.id}", "api": f"{base}/api/{repo.type}s/{repo.id}"},
            "headSha": head, "owner": {"id": _object_id(repo.namespace)}, "tags": [],
        }
        if repo.type == "space":
            repo_json["subdomain"] = f"{repo.namespace}-{repo.name}".lower().replace("_", "-").replace(".", "-")
        for hook in hooks:
            payload = {"event": {"action": action, "scope": scope}, "repo": repo_json,
                       "webhook": {"id": hook["id"], "version": 3}, **extra}
            self._enqueue({"hook_id": hook["id"], "payload": payload, "attempt": 0}, 0.0)

    def _watches(self, hook: dict, repo: Repo, domain: str) -> bool:
        if domain not in hook.get("domains", DOMAINS):
            return False
        # A user-wide watch must not leak a private repo its owner cannot read (an org's members can).
        if repo.private and self.hub.teams.role(hook["owner"], repo.namespace) is None:
            return False
        for item in hook["watched"]:
            if item["type"] == repo.type and item["name"].lower() == repo.id.lower():
                return True
            if item["type"] in ("user", "org") and item["name"].lower() == repo.namespace.lower():
                return True
        return False

    # ---- delivery ----------------------------------------------------------------------------------------------
    def _enqueue(self, delivery: dict, delay: float) -> None:
        with self.cond:
            heapq.heappush(self.queue, (time.monotonic() + delay, next(self.seq), delivery))
            self.cond.notify()

    def _schedule_loop(self) -> None:
        while True:
            with self.cond:
                while not self.closed and (not self.queue or self.queue[0][0] > time.monotonic()):
                    self.cond.wait(None if not self.queue else self.queue[0][0] - time.monotonic())
                if self.closed:
                    return
                _, _, delivery = heapq.heappop(self.queue)
            self.pool.submit(self._deliver, delivery)

    def _deliver(self, delivery: dict) -> None:
        # Re-read the webhook: it may have been disabled, deleted or pointed elsewhere since the event.
        with self.storage.lock:
            hook = next((h for h in self.storage.webhooks() if h["id"] == delivery["hook_id"]), None)
        if hook is None or hook["disabled"] or self.closed:
            return
        headers = {"Content-Type": "application/json", "User-Agent": "localhub-webhooks"}
        if hook.get("secret"):
            headers["X-Webhook-Secret"] = hook["secret"]
        url = urlsplit(hook["url"])
        target = url.hostname  # logs name the host only: a URL may carry credentials
        try:
            status = self._post(url, json.dumps(delivery["payload"]).encode(), headers)
            ok, why = 200 <= status < 300, f"HTTP {status}"
        except _PrivateTarget as err:
            log.warning("webhook %s: not delivered: %s (webhooks target public addresses only)", hook["id"], err)
            return
        except (OSError, ValueError, http.client.HTTPException) as err:
            ok, why = False, type(err).__name__
        if ok:
            log.info("webhook %s delivered to %s", hook["id"], target)
            return
        attempt = delivery["attempt"]
        if attempt >= len(self.retry_delays) or self.closed:
            log.warning("webhook %s: giving up on %s after %d attempts (%s)", hook["id"], target, attempt + 1, why)
            return
        log.info("webhook %s: %s from %s, retry in %ss", hook["id"], why, target, self.retry_delays[attempt])
        self._enqueue({**delivery, "attempt": attempt + 1}, self.retry_delays[attempt])

    def _post(self, url, body: bytes, headers: dict[str, str]) -> int:
        """One POST, no redirects followed, to the address checked here (see "Targets" above). http.client, not
        httpx: httpx logs every URL at INFO."""
        conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(url.hostname, url.port, timeout=self.timeout)
        if not self.hub.allow_private_webhooks:
            addrs = _resolve(url.hostname or "", url.port)
            bad = next((a for a in addrs if not _public_address(a)), None)
            if bad is not None or _is_local_name(url.hostname or ""):
                raise _PrivateTarget(f"{url.hostname} resolves to the non-public address {bad or '127.0.0.1'}")
            pinned = addrs[0]
            # TLS still checks the certificate against the name: only the TCP connection is pinned to the address.
            conn._create_connection = lambda address, *a, **k: socket.create_connection((pinned, address[1]), *a, **k)
        if url.username:  # credentials in the URL become Basic auth, as a browser or httpx would send them
            token = base64.b64encode(f"{unquote(url.username)}:{unquote(url.password or '')}".encode()).decode()
            headers = {**headers, "Authorization": f"Basic {token}"}
        try:
            conn.request("POST", (url.path or "/") + (f"?{url.query}" if url.query else ""), body, headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)


class _PrivateTarget(Exception):
    """A delivery's target resolved to a non-public address: not delivered, not retried."""


def _resolve(host: str, port: int | None) -> list[str]:
    """Every address `host` resolves to (an address literal: itself)."""
    if not host:
        raise ValueError("no host")
    infos = socket.getaddrinfo(host, port or 80, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _public_address(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _is_local_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def _validated(body: dict, partial: bool) -> dict:
    """The fields of a create/update body, checked; `partial` (update) keeps what is absent or empty."""
    if body.get("jobSourceId") or body.get("job"):
        raise HubError(400, None, "localhub does not run Jobs: webhooks need a `url`")
    out: dict = {}
    url = body.get("url")
    if url is not None or not partial:
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
            valid = bool(parts and parts.scheme in ("http", "https") and parts.hostname and parts.port != 0
                         and not any(c in url for c in "\r\n\0 "))
        except ValueError:  # "http://[", a port out of range
            valid = False
        if not valid:
            raise HubError(400, None, f"Invalid webhook url: {str(url)[:200]!r} (an http(s) URL is required)")
        out["url"] = url
    watched = body.get("watched") or []
    if not isinstance(watched, list):
        raise HubError(400, None, f"Invalid watched {str(watched)[:100]!r}: a list of {{type, name}} items")
    if watched or not partial:
        if not watched:
            raise HubError(400, None, "A webhook must watch at least one item")
        for item in watched:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name or item.get("type") not in WATCH_TYPES:
                raise HubError(400, None, f"Invalid watched item {str(item)[:200]!r}: type in {WATCH_TYPES} and a name")
        out["watched"] = [{"type": i["type"], "name": i["name"]} for i in watched]
    domains = body.get("domains")
    if domains is not None or not partial:
        domains = list(DOMAINS) if domains is None else domains
        if not isinstance(domains, list) or not domains or any(d not in DOMAINS for d in domains):
            raise HubError(400, None, f"Invalid domains {str(domains)[:200]!r}: a non-empty subset of {DOMAINS}")
        out["domains"] = domains
    if "secret" in body or not partial:
        secret = body.get("secret") or None
        if secret is not None and (not isinstance(secret, str) or any(c in secret for c in "\r\n\0")):
            raise HubError(400, None, "Invalid webhook secret: a string on one line")
        out["secret"] = secret
    return out


def _public(hook: dict) -> dict:
    return {k: hook.get(k) for k in ("id", "url", "watched", "domains", "secret", "disabled")} | {"job": None}
