"""The hub admin's credential: what fault injection and the org/user admin routes check.

The admin token is $LOCALHUB_ADMIN_TOKEN when the server has it, else derived from the hub's `secret.key` (whoever
can read the data dir is already its admin): `admin_token(data_dir)`. It travels in the header `X-Localhub-Admin`,
never as a bearer token (a Hub client would send it to every route), and admin routes refuse non-loopback peers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from .http import Ctx, HubError

ADMIN_HEADER = "X-Localhub-Admin"
ADMIN_ENV = "LOCALHUB_ADMIN_TOKEN"


def admin_token(data_dir: str | Path | None = None, secret: bytes | None = None) -> str:
    """The admin token of a hub: $LOCALHUB_ADMIN_TOKEN if set, else an HMAC of the hub's secret key."""
    if os.environ.get(ADMIN_ENV):
        return os.environ[ADMIN_ENV]
    if secret is None:
        secret = (Path(data_dir) / "secret.key").read_bytes()  # type: ignore[arg-type]
    return hmac.new(secret, b"localhub-admin", hashlib.sha256).hexdigest()


def is_admin(ctx: Ctx) -> bool:
    """The request carries the admin token and comes from loopback."""
    peer = ctx.request.client.host if ctx.request.client else ""
    given = ctx.request.headers.get(ADMIN_HEADER, "")
    return peer in ("127.0.0.1", "::1", "localhost") and bool(given) and hmac.compare_digest(
        given.encode(), admin_token(secret=ctx.hub.secret).encode())


def check_admin(ctx: Ctx, what: str) -> None:
    peer = ctx.request.client.host if ctx.request.client else ""
    if peer not in ("127.0.0.1", "::1", "localhost"):
        raise HubError(403, None, f"{what} is only reachable from loopback")
    if not is_admin(ctx):
        raise HubError(403, None, f"{what} needs the header {ADMIN_HEADER} with the hub's admin token")


def admin_call(method: str, url: str, path: str, admin: str, body: Any = None) -> Any:
    """One admin request (plain httpx, no Hub token); raises on an error status."""
    import httpx

    r = httpx.request(method, f"{url.rstrip('/')}{path}", json=body, headers={ADMIN_HEADER: admin}, timeout=10)
    r.raise_for_status()
    return r.json()
