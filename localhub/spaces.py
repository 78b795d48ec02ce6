"""Spaces that really run: every commit to a Space's `main` starts its app as a local process on loopback.

Settings (persisted in the repo's `space` JSON, so they survive restarts): secrets (write-only: listed with
description/updatedAt, never a value), variables, requested hardware (default `cpu-basic`; a label only, every app
runs on this machine's CPU), sleep time (`gcTimeout`; reported, never acted on: localhub cannot see the app's
traffic, so a Space never goes to SLEEPING), paused flag. `repos/create` may carry secrets, variables, hardware and
sleepTimeSeconds.

Routes (hub-protocol.md §3), writes need the owner's write token, runtime and logs follow repo visibility, the
secret/variable listings are owner-only like the Hub's settings page:
    GET  /api/spaces/{ns}/{name}/runtime                 POST /hardware {flavor, sleepTimeSeconds?}
    POST|GET|DELETE .../secrets  .../variables           POST /sleeptime {seconds}   POST /pause
    POST /restart[?factory=true]                         GET  /logs/{run|build}  (server-sent events)
Logs are SSE lines `data: {"data": "<line>\\n", "timestamp": "..."}` (what `HfApi.fetch_space_logs` parses; it sends
no `?follow=`). The stream replays the buffer, then follows the live app and ends when the run ends. Because a
no-follow client otherwise waits for a 5 s read timeout, a live stream sends one empty event (`data: ""`) about 1.2 s
after it opened: its timestamp is past the replay window, which ends a no-follow read; a follower sees one empty
string.

Process model: see localhub/spaces_runner.py (`Supervisor`, which `Spaces` inherits). A commit to `main` only records
the stage BUILDING here and queues the work; the supervisor thread stops the old app, starts the new one
(APP_STARTING -> RUNNING, or RUNTIME_ERROR), and a restart with the server resumes every unpaused Space.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from email.utils import parsedate_to_datetime

from starlette.responses import JSONResponse, Response, StreamingResponse

from .app import Extension
from .http import Ctx, HubError, Router, iso, repo_for_read, repo_for_write
from .spaces_runner import ALIVE, LogBuffer, SpaceState, Supervisor
from .storage import Repo

log = logging.getLogger("localhub")
HARDWARE = (
    "cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
    "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8", "rtx-pro-6000",
    "rtx-pro-6000x2", "rtx-pro-6000x4", "rtx-pro-6000x8",
)
DEFAULT_HARDWARE = "cpu-basic"
FREE_SLEEP_TIME = 172800  # the Hub's fixed 48 h for cpu-basic
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Spaces(Supervisor, Extension):
    """The Spaces extension: settings and runtime routes, repo hooks and the logs stream; `Supervisor` runs the apps."""

    def __init__(self, hub, start_timeout: float | None = None, resume: bool = True):
        super().__init__(hub, start_timeout, resume)
        self.router = Router()
        sp = "/api/spaces/{ns}/{name}"
        self.router.add("GET", f"{sp}/runtime")(self._runtime_route)
        self.router.add("GET,POST,DELETE", f"{sp}/{{kind:secrets|variables}}")(self._settings_route)
        self.router.add("POST", f"{sp}/hardware")(self._hardware_route)
        self.router.add("POST", f"{sp}/sleeptime")(self._sleeptime_route)
        self.router.add("POST", f"{sp}/{{action:restart|pause}}")(self._lifecycle_route)
        self.router.add("GET", f"{sp}/logs/{{kind:run|build}}")(self._logs_route)
        self.thread.start()  # last: the supervisor may resume Spaces at once

    # ---- what the Hub reports ----------------------------------------------------------------------------------
    def runtime(self, repo: Repo) -> dict:
        space = repo.space
        requested = space.get("hardware") or DEFAULT_HARDWARE
        with self.lock:
            st = self.states.get(repo.id)
            if st is not None:
                stage = st.stage
            else:  # not seen since the server started: the supervisor resumes it, unless it is paused
                stage = "PAUSED" if space.get("paused") else ("BUILDING" if self.resume else "STOPPED")
            error, port = (st.error, st.port) if st else (None, None)
        alive = stage in ALIVE
        sleep = space.get("sleepTime", FREE_SLEEP_TIME if requested == DEFAULT_HARDWARE else None)
        out = {
            "stage": stage, "hardware": {"current": requested if alive else None, "requested": requested},
            "gcTimeout": sleep, "storage": None, "devMode": False, "sdk": repo.sdk,
            "replicas": {"current": 1 if alive else 0, "requested": 1},
        }
        if error:
            out["errorMessage"] = error
        # localhub's own: how apps run here, and the token a run gets (hubflow reads `spaceToken` to know it need not
        # hand the Space a token of its own: see docs/reliability.md).
        own_token = "HF_TOKEN" in space.get("secrets", {})
        out["localhub"] = {
            "sandbox": self._sandbox.mode if self._sandbox else "not probed yet",
            "spaceToken": {"minted": not own_token, "role": "read", "namespace": repo.namespace,
                           "source": "secret HF_TOKEN" if own_token else "localhub"},
        }
        if alive and port:
            out["domains"] = [{"domain": f"127.0.0.1:{port}", "stage": "READY" if stage == "RUNNING" else "PENDING"}]
        return out

    def space_info(self, repo: Repo, base_url: str) -> dict:
        runtime = self.runtime(repo)
        domains = runtime.get("domains")
        return {
            "sdk": repo.sdk, "runtime": runtime, "host": f"http://{domains[0]['domain']}" if domains else None,
            "subdomain": f"{repo.namespace}-{repo.name}".lower().replace("_", "-").replace(".", "-"),
        }

    # ---- hooks ---------------------------------------------------------------------------------------------------
    async def on_repo_created(self, repo: Repo, body: dict) -> None:
        if repo.type != "space":
            return
        space: dict = {"secrets": {}, "variables": {}}
        try:
            for kind in ("secrets", "variables"):
                items = body.get(kind) or []
                if not isinstance(items, list):
                    raise HubError(400, None, f"{kind} must be a list of {{key, value, description?}}")
                for item in items:
                    space[kind][_env_key(item.get("key"))] = _setting(item)
            if body.get("hardware"):
                space["hardware"] = _flavor(body["hardware"])
            if body.get("sleepTimeSeconds") is not None:
                space["sleepTime"] = int(body["sleepTimeSeconds"])
        except (HubError, TypeError, ValueError, AttributeError) as err:
            self.storage.delete_repo(repo)  # the core created it already: a rejected create leaves nothing behind
            raise err if isinstance(err, HubError) else HubError(400, None, f"Invalid Space settings: {err}")
        self.storage.update_repo(repo, space=space)
        # The Hub's initial commit has no app. "stop", not a fresh state: a deleted namesake may still be running.
        self._request(repo, "stop", "NO_APP_FILE")

    async def on_repo_deleted(self, repo: Repo) -> None:
        if repo.type == "space":
            self._request(repo, "remove", "DELETING")

    async def on_repo_moved(self, old: Repo, new: Repo) -> None:
        if old.type == "space":  # an app runs under its Space's id: stop it there, start it again under the new one
            self._request(old, "remove", "DELETING")
            if not new.space.get("paused"):
                self._request(new, "deploy", "BUILDING")

    async def on_commit(self, repo: Repo, branch: str, oid: str) -> None:
        if repo.type == "space" and branch == "main" and not repo.space.get("paused"):
            self._request(repo, "deploy", "BUILDING")

    # ---- routes --------------------------------------------------------------------------------------------------
    def _space(self, ctx: Ctx, write: bool) -> Repo:
        rid = f"{ctx.params['ns']}/{ctx.params['name']}"
        return repo_for_write(ctx, "space", rid) if write else repo_for_read(ctx, "space", rid)

    def _update(self, repo: Repo, change) -> Repo:
        with self.storage.lock:  # read-modify-write of the JSON column, atomic against other settings calls
            fresh = self.storage.get_repo("space", repo.id)
            space = dict(fresh.space)
            change(space)
            return self.storage.update_repo(fresh, space=space)

    async def _runtime_route(self, ctx: Ctx) -> Response:
        return JSONResponse(self.runtime(self._space(ctx, write=False)))

    async def _settings_route(self, ctx: Ctx) -> Response:
        kind, method = ctx.params["kind"], ctx.request.method
        repo = self._space(ctx, write=True)
        if method != "GET":
            body = await ctx.json()
            key = _env_key(body.get("key"))
            if method == "POST":
                repo = self._update(repo, lambda s: s.setdefault(kind, {}).__setitem__(key, _setting(body)))
            else:
                repo = self._update(repo, lambda s: s.setdefault(kind, {}).pop(key, None))
            log.info("space %s: %s %s %s", repo.id, kind, "set" if method == "POST" else "deleted", key)
            self._redeploy(repo)  # the Hub restarts a Space whose environment changed
        items = repo.space.get(kind, {})
        fields = ("description", "updatedAt") if kind == "secrets" else ("value", "description", "updatedAt")
        return JSONResponse({k: {f: v.get(f) for f in fields} for k, v in items.items()})

    async def _hardware_route(self, ctx: Ctx) -> Response:
        repo = self._space(ctx, write=True)
        body = await ctx.json()
        flavor = _flavor(body.get("flavor"))
        sleep = body.get("sleepTimeSeconds")
        if sleep is not None and (not isinstance(sleep, int) or isinstance(sleep, bool)):
            raise HubError(400, None, "sleepTimeSeconds must be an integer (seconds; -1: never sleep)")
        changed = flavor != (repo.space.get("hardware") or DEFAULT_HARDWARE)

        def change(s: dict) -> None:
            s["hardware"] = flavor
            if sleep is not None:
                s["sleepTime"] = sleep

        repo = self._update(repo, change)
        if changed:
            self._redeploy(repo)
        return JSONResponse(self.runtime(repo))

    async def _sleeptime_route(self, ctx: Ctx) -> Response:
        repo = self._space(ctx, write=True)
        seconds = (await ctx.json()).get("seconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise HubError(400, None, "sleeptime wants {\"seconds\": <int>} (-1: never sleep)")
        repo = self._update(repo, lambda s: s.__setitem__("sleepTime", seconds))
        return JSONResponse(self.runtime(repo))

    async def _lifecycle_route(self, ctx: Ctx) -> Response:
        repo = self._space(ctx, write=True)
        pause = ctx.params["action"] == "pause"
        if pause and repo.sdk == "static":
            raise HubError(400, None, "Static Spaces are always running: they cannot be paused")
        repo = self._update(repo, lambda s: s.__setitem__("paused", pause))
        self._request(repo, "stop" if pause else "deploy", "PAUSED" if pause else "BUILDING")
        return JSONResponse(self.runtime(repo))

    def _redeploy(self, repo: Repo) -> None:
        with self.lock:
            known = repo.id in self.states
        if known and not repo.space.get("paused"):
            self._request(repo, "deploy", "BUILDING")

    async def _logs_route(self, ctx: Ctx) -> Response:
        repo = self._space(ctx, write=False)
        with self.lock:
            st = self.states.get(repo.id)
            buf = None if st is None else (st.build_log if ctx.params["kind"] == "build" else st.run_log)
            gen = st.gen if st else 0
        return _EventStream(lambda stream: self._events(buf, st, gen, stream))

    async def _events(self, buf: LogBuffer | None, st: SpaceState | None, gen: int, stream: "_EventStream"):
        if buf is None or st is None:
            return
        i, opened, nudged = 0, time.time(), False
        while True:
            lines, i, done = buf.read(i)
            for ts, text in lines:
                yield _sse(text, min(ts, stream.replay_end) if ts <= opened else ts)
            if done or st.gen != gen or self.closed.is_set() or stream.server_closing():
                return
            if not nudged and time.time() - opened > 1.2:
                nudged = True
                yield _sse("", time.time())  # ends a no-follow read (see the module docstring)
            await asyncio.sleep(0.2)

# ---- helpers ---------------------------------------------------------------------------------------------------
class _EventStream(StreamingResponse):
    """The SSE response of the logs route, with two facts from uvicorn's request cycle (`send`'s owner):

    * `server_closing()`: uvicorn waits for open responses before it stops, and a stream that follows a live app
      never ends by itself; uvicorn flags a graceful shutdown by turning the cycle's `keep_alive` off.
    * `replay_end`: a no-follow client stops at the first event stamped after `Date + 1 s`, and uvicorn refreshes
      its `Date` once a second, so lines logged in the last second before the request would be cut off: their
      timestamps are clamped to the `Date` this response really carries, plus 1 s.
    """

    cycle = None
    replay_end = float("inf")

    def __init__(self, events) -> None:
        """`events(stream)` -> the async iterator of SSE chunks."""
        super().__init__(events(self), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope, receive, send) -> None:
        cycle = getattr(send, "__self__", None)
        self.cycle = cycle if getattr(cycle, "keep_alive", False) is True else None
        for key, value in getattr(cycle, "default_headers", None) or []:
            if key.lower() == b"date":
                self.replay_end = parsedate_to_datetime(value.decode()).timestamp() + 1
        await super().__call__(scope, receive, send)

    def server_closing(self) -> bool:
        return self.cycle is not None and self.cycle.keep_alive is False


def _sse(text: str, ts: float) -> str:
    return "data: " + json.dumps({"data": text, "timestamp": iso(ts)}) + "\n\n"




def _env_key(key) -> str:
    if not isinstance(key, str) or not ENV_KEY_RE.match(key):
        raise HubError(400, None, f"Invalid key {key!r}: letters, digits and underscores, not starting with a digit")
    return key


def _setting(item: dict) -> dict:
    if not isinstance(item, dict) or not isinstance(item.get("value"), str):
        key = item.get("key") if isinstance(item, dict) else item
        raise HubError(400, None, f"A value (string) is required for {str(key)[:100]!r}")
    if "\0" in item["value"]:
        raise HubError(400, None, f"The value of {item.get('key')!r} contains a NUL byte: an environment value cannot")
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        raise HubError(400, None, "description must be a string")
    return {"value": item["value"], "description": description, "updatedAt": iso(time.time())}


def _flavor(flavor) -> str:
    if not isinstance(flavor, str) or flavor not in HARDWARE:
        raise HubError(400, None, f"Invalid hardware flavor {str(flavor)[:100]!r}: one of {', '.join(HARDWARE)}")
    return flavor
