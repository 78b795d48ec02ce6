"""Hub webhooks → Prefect events: the receiver (`hubflow webhooks serve`) and its registration on the Hub.

    export HUBFLOW_WEBHOOK_SECRET=...   # or HUBFLOW_WEBHOOK_SECRET_BLOCK=<name of a Prefect Secret block>
    export PREFECT_API_URL=http://prefect:4200/api
    hubflow webhooks serve --host 0.0.0.0 --port 8787 --state-dir /var/lib/hubflow
    hubflow webhooks register --url https://ingress.example/webhooks/hub --watch dataset:me/reviews

Prefect's inbound webhooks are a Cloud feature, so an open-source server needs this receiver. `POST /webhooks/hub`
checks `X-Webhook-Secret` in constant time (401), parses the Hub's v3 payload (400), and for a commit to the watched
branch of a dataset or model repo calls `hubflow.events.emit_hub_update` — which emits each revision once. At least
once: it answers 202 `{"emitted", "event_id", "reason"}` only after the Prefect API accepted the event, and records
the revision as announced only then; 503 when Prefect did not take it, so the Hub retries and a redelivery emits.
Malformed repo ids and shas are refused (400). Without Hub access (no ingress), use the polling sensor
`flows/watch.py` instead.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from contextlib import asynccontextmanager

SECRET_ENV = "HUBFLOW_WEBHOOK_SECRET"
SECRET_BLOCK_ENV = "HUBFLOW_WEBHOOK_SECRET_BLOCK"  # name of a Prefect Secret block holding the secret
PATH = "/webhooks/hub"
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")  # namespace/name, as the Hub allows
SHA = re.compile(r"[0-9a-f]{40}")
MAX_BODY = 1 << 20  # the Hub's payloads are a few KB
log = logging.getLogger("hubflow.ops.webhooks")


def webhook_secret() -> str:
    """The shared secret, read once at start: $HUBFLOW_WEBHOOK_SECRET, else the Secret block it names. Never logged."""
    from ..secrets import secret as read_secret

    secret = read_secret((SECRET_ENV,), SECRET_BLOCK_ENV)
    if not secret:
        raise SystemExit(f"hubflow webhooks: no secret; set {SECRET_ENV}, or {SECRET_BLOCK_ENV} to a Prefect Secret "
                         "block's name (an open receiver would let anyone start runs)")
    return secret


def create_app(secret: str, seen, branch: str = "main"):
    """The receiver as a Starlette app; `seen` is the `hubflow.events.SeenRevisions` record it emits through."""
    from huggingface_hub import WebhookPayload
    from pydantic import ValidationError
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ..events import EmitError, emit_hub_update, hub_event_id

    expected = secret.encode()
    wanted_ref = f"refs/heads/{branch}"

    def answer(emitted: bool, event_id=None, reason: str | None = None, status: int = 202) -> JSONResponse:
        if reason and reason.startswith("ignored"):
            log.info("%s", reason)
        return JSONResponse({"emitted": emitted, "event_id": event_id and str(event_id), "reason": reason}, status)

    async def receive(request: Request) -> JSONResponse:
        given = request.headers.get("x-webhook-secret", "").encode()
        if not hmac.compare_digest(given, expected):
            log.warning("refused a delivery from %s: missing or wrong X-Webhook-Secret",
                        request.client.host if request.client else "?")
            return JSONResponse({"error": "missing or wrong X-Webhook-Secret"}, 401)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": "payload too large"}, 413)
        try:
            payload = WebhookPayload.model_validate(json.loads(body))
        except (ValueError, ValidationError) as e:  # JSONDecodeError is a ValueError
            return JSONResponse({"error": f"not a Hub webhook payload: {e}"[:500]}, 400)

        repo = payload.repo
        if not REPO_ID.fullmatch(repo.name or ""):
            return JSONResponse({"error": f"not a Hub repo id: {repo.name!r:.100}"}, 400)
        if payload.event.scope != "repo.content" or repo.type not in ("dataset", "model"):
            return answer(False, reason=f"ignored: {payload.event.scope} on {repo.type} {repo.name}")
        # The new sha is in updatedRefs: WebhookPayload.repo.head_sha stays None (the Hub sends `headSha`).
        sha = next((r.newSha for r in payload.updatedRefs or [] if r.ref == wanted_ref and r.newSha), None)
        if sha is None:
            return answer(False, reason=f"ignored: no new commit on {wanted_ref} of {repo.type} {repo.name}")
        if not SHA.fullmatch(sha):
            return JSONResponse({"error": f"not a commit sha: {sha!r:.60}"}, 400)
        try:
            event = await run_in_threadpool(emit_hub_update, repo.type, repo.name, sha, wanted_ref, "webhook", seen)
        except EmitError as e:
            log.error("%s", e)
            return answer(False, hub_event_id(repo.type, repo.name, sha), "prefect did not take the event", 503)
        if event is None:
            log.info("%s %s@%s: already announced", repo.type, repo.name, sha[:10])
            return answer(False, hub_event_id(repo.type, repo.name, sha), "duplicate: revision already announced")
        log.info("%s %s@%s: emitted hub.%s.updated (%s)", repo.type, repo.name, sha[:10], repo.type, event.id)
        return answer(True, event.id)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app):
        yield
        seen.close()

    return Starlette(routes=[Route(PATH, receive, methods=["POST"]), Route("/health", health, methods=["GET"])],
                     lifespan=lifespan)


def serve(host: str, port: int, state_dir: str | None, branch: str = "main") -> None:
    """Run the receiver until interrupted."""
    import uvicorn
    from prefect.settings import get_current_settings

    from ..events import SeenRevisions

    secret = webhook_secret()
    if not get_current_settings().api.url:
        raise SystemExit("hubflow webhooks: set PREFECT_API_URL to the Prefect server whose automations should see "
                         "the events (without it they would go to a throwaway temporary server)")
    seen = SeenRevisions(state_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("receiving Hub webhooks on http://%s:%d%s (branch %s, record %s)", host, port, PATH, branch, seen.path)
    uvicorn.run(create_app(secret, seen, branch), host=host, port=port, log_level="info")


def register(url: str, watch: list[str]) -> dict:
    """Create the Hub webhook for `url` watching `type:ns/name` items, or add them to the one already there."""
    from ..doors import hub

    items = [_watched_item(w) for w in watch]
    secret = webhook_secret()
    if not hub.hf_token():
        raise SystemExit("hubflow webhooks: no Hub token; set HF_TOKEN or HUBFLOW_HF_TOKEN_BLOCK")
    return hub.register_webhook(url, items, secret)


def _watched_item(text: str) -> tuple[str, str]:
    kind, _, name = text.partition(":")
    if kind not in ("dataset", "model") or name.count("/") != 1:
        raise SystemExit(f"hubflow webhooks: --watch {text!r}: expected dataset:NAMESPACE/NAME or model:NAMESPACE/NAME")
    return kind, name
