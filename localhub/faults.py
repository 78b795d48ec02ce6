"""Fault injection for localhub: make chosen routes answer 429/5xx, answer slowly, or drop the connection.

Each route has a class (`download`, `upload`, `commit`, `api`); a rule picks a class and a kind:

    {"class": "download", "kind": "429", "retry_after": 0, "next": 2}      # the next 2 download calls get a 429
    {"class": "api", "kind": "503", "rate": 0.3, "seed": 7}               # 30 % of API calls, seeded RNG
    {"class": "upload", "kind": "500", "method": "PUT", "next": 1}        # only the LFS PUT
    {"class": "commit", "kind": "slow", "delay": 2.0}                     # every commit waits 2 s, then succeeds
    {"class": "*", "kind": "drop", "next": 1}                             # close the connection, no response

kinds: "429" (with `Retry-After: retry_after`, default 1), "500", "502", "503", "504", "slow" (`delay` seconds, then
served normally), "drop" (the TCP connection is aborted before any byte of a response: the client sees "server
disconnected"). `next: N` fires on the next N matching calls, then the rule stays listed but inert; `rate` (0..1,
default 1) fires at random with `random.Random(seed)`; both together: at most N firings at that rate. The first rule
that fires wins. `method` (optional) narrows a rule to one HTTP method (HEAD counts as itself, not as GET).

Runtime control, `/_localhub/faults` (route class `admin`, never faulted):
    POST   a JSON list of rules (or {"rules": [...]}) -> replaces the rules
    GET    -> {"rules": [... with "injected" counts and "remaining" for `next` rules], "seen": {class: calls}}
    DELETE -> clears the rules and counters
Admin auth: header `X-Localhub-Admin: <token>`. The token is $LOCALHUB_ADMIN_TOKEN when the server has it, else
derived from the hub's `secret.key` (whoever can read the data dir is already its admin): `admin_token(data_dir)`.
The route also refuses non-loopback peers. A server started with $LOCALHUB_FAULTS (the same JSON) starts with them.

Client helpers (plain httpx, no Hub token): `set_faults(url, rules, admin=...)`, `get_faults`, `clear_faults`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .admin import ADMIN_HEADER, admin_token, check_admin
from .app import Extension
from .http import Ctx, HubError, Router

log = logging.getLogger("localhub")
CLASSES = ("download", "upload", "commit", "api", "*")
STATUS_KINDS = ("429", "500", "502", "503", "504")
KINDS = STATUS_KINDS + ("slow", "drop")
FAULTS_ENV = "LOCALHUB_FAULTS"
# admin_token lives in localhub/admin.py; it stays importable from here, its first home.
__all__ = ["ADMIN_HEADER", "Faults", "admin_token", "clear_faults", "get_faults", "set_faults"]


@dataclass
class Rule:
    route_class: str
    kind: str
    rate: float = 1.0
    next: int | None = None
    delay: float = 1.0
    retry_after: int = 1
    method: str | None = None
    seed: int = 0
    injected: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def parse(cls, raw: dict) -> "Rule":
        kind = str(raw.get("kind", ""))
        route_class = raw.get("class") or raw.get("route_class") or "*"
        if kind not in KINDS or route_class not in CLASSES:
            raise HubError(400, None, f"fault rule needs kind in {KINDS} and class in {CLASSES}: got {raw!r}")
        try:
            rate = float(raw.get("rate", 1.0))
            nxt = raw.get("next")
            if not 0.0 <= rate <= 1.0 or (nxt is not None and int(nxt) < 0):
                raise ValueError("rate or next out of range")
            return cls(route_class, kind, rate, None if nxt is None else int(nxt), float(raw.get("delay", 1.0)),
                       int(raw.get("retry_after", 1)), str(raw.get("method") or "").upper() or None,
                       int(raw.get("seed", 0)))
        except (TypeError, ValueError):
            raise HubError(400, None, f"fault rule needs 0 <= rate <= 1, next >= 0 and numbers for delay, "
                                      f"retry_after and seed: got {str(raw)[:200]}") from None

    def fires(self, route_class: str, method: str) -> bool:
        if self.route_class not in ("*", route_class) or (self.method and self.method != method):
            return False
        if self.next is not None and self.injected >= self.next:
            return False
        if self.rate < 1.0 and self.rng.random() >= self.rate:
            return False
        self.injected += 1
        return True

    def as_dict(self) -> dict:
        d: dict[str, Any] = {"class": self.route_class, "kind": self.kind, "rate": self.rate, "seed": self.seed,
                             "injected": self.injected}
        if self.next is not None:
            d.update(next=self.next, remaining=max(0, self.next - self.injected))
        if self.method:
            d["method"] = self.method
        if self.kind == "slow":
            d["delay"] = self.delay
        if self.kind == "429":
            d["retry_after"] = self.retry_after
        return d


class DropConnection(Response):
    """A 'response' that aborts the TCP connection before any byte is sent.

    uvicorn hands the app its RequestResponseCycle's bound `send`, whose owner holds the transport; aborting it is the
    only way to send nothing (an exception would make uvicorn answer 500). Other servers: start a response that
    promises a body, then fail, so the client still sees a broken connection rather than a clean answer.
    """

    def __init__(self) -> None:
        super().__init__(status_code=599)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            transport.abort()
            await asyncio.sleep(0.01)  # let connection_lost run, so uvicorn does not try to answer 500
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        raise ConnectionAbortedError("localhub fault injection: drop")


class Faults(Extension):
    """Injects the configured faults in `before_request`; rules live in memory (a restart clears them)."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.router = Router()
        self.router.add("GET,POST,DELETE", "/_localhub/faults", route_class="admin")(self._admin)
        if os.environ.get(FAULTS_ENV):
            self.rules = self._parse(json.loads(os.environ[FAULTS_ENV]))

    @staticmethod
    def _parse(body: Any) -> list[Rule]:
        raw = body.get("rules", []) if isinstance(body, dict) else body
        if not isinstance(raw, list):
            raise HubError(400, None, "POST /_localhub/faults wants a JSON list of rules")
        if not all(isinstance(r, dict) for r in raw):
            raise HubError(400, None, "POST /_localhub/faults wants a JSON list of rules (objects)")
        return [Rule.parse(r) for r in raw]

    async def before_request(self, route_class: str, request: Request) -> Response | None:
        if route_class == "admin":
            return None
        with self.lock:
            self.seen[route_class] = self.seen.get(route_class, 0) + 1
            rule = next((r for r in self.rules if r.fires(route_class, request.method)), None)
        if rule is None:
            return None
        log.info("fault injected: %s on %s %s", rule.kind, request.method, request.url.path)
        if rule.kind == "slow":
            await asyncio.sleep(rule.delay)
            return None
        if rule.kind == "drop":
            return DropConnection()
        message = f"localhub fault injection: {rule.kind} on {route_class}"
        headers = {"X-Error-Message": message, "X-Localhub-Fault": rule.kind}
        if rule.kind == "429":
            headers["Retry-After"] = str(rule.retry_after)
        return JSONResponse({"error": message}, status_code=int(rule.kind), headers=headers)

    async def _admin(self, ctx: Ctx) -> Response:
        check_admin(ctx, "fault injection")
        if ctx.request.method == "POST":
            try:
                rules = self._parse(json.loads(await ctx.request.body() or b"[]"))
            except (ValueError, RecursionError):
                raise HubError(400, None, "POST /_localhub/faults wants a JSON list of rules") from None
            with self.lock:
                self.rules, self.seen = rules, {}
        elif ctx.request.method == "DELETE":
            with self.lock:
                self.rules, self.seen = [], {}
        with self.lock:
            return JSONResponse({"rules": [r.as_dict() for r in self.rules], "seen": dict(self.seen)})


# ---- client helpers ----------------------------------------------------------------------------------------------
def _call(method: str, url: str, admin: str, body: Any = None) -> dict:
    import httpx

    r = httpx.request(method, f"{url.rstrip('/')}/_localhub/faults", json=body, headers={ADMIN_HEADER: admin},
                      timeout=10)
    r.raise_for_status()
    return r.json()


def set_faults(url: str, rules: list[dict], admin: str) -> dict:
    """Replace the hub's fault rules; returns the state (rules with counters)."""
    return _call("POST", url, admin, rules)


def get_faults(url: str, admin: str) -> dict:
    """{"rules": [... "injected", "remaining"], "seen": {route_class: calls since the last set/clear}}."""
    return _call("GET", url, admin)


def clear_faults(url: str, admin: str) -> dict:
    return _call("DELETE", url, admin)
