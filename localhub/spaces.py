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

Process model. One supervisor thread owns every app process (it spawns them, so PR_SET_PDEATHSIG set in the child
ties them to it: a hub killed with -9 takes its apps along). On a commit to `main` (the request only records the
stage BUILDING and queues work): stop the old process (SIGTERM to its process group, SIGKILL after 5 s), copy the
commit's files into a fresh `data_dir/spaces/{ns}/{name}/runs/<run>/app`, read README front matter (`sdk`,
`app_file`), then `python app.py` there (gradio, and docker Spaces that carry a python app_file; static Spaces get
`python -m http.server`) with: the Space's variables and secrets, HF_ENDPOINT (the hub), PORT/GRADIO_SERVER_PORT (a
free port), GRADIO_SERVER_NAME=127.0.0.1, SPACE_ID/SPACE_AUTHOR_NAME/SPACE_REPO_NAME/SPACE_HOST, SYSTEM=spaces,
HF_HOME (per Space, so the server's saved token is out of reach), HOME/PATH/LANG, and nothing else inherited (no
HF_TOKEN of the server). requirements.txt is NOT installed (offline): the app runs with the server's Python.
APP_STARTING until the app answers HTTP on its port -> RUNNING; exiting, or not answering within the start timeout
($LOCALHUB_SPACE_START_TIMEOUT, default 120 s: importing gradio on 2 busy cores is slow) -> RUNTIME_ERROR with the
exit code and the last log lines in `errorMessage`. A restart with the server resumes every unpaused Space.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import yaml
from starlette.responses import JSONResponse, Response, StreamingResponse

from .app import Extension
from .http import Ctx, HubError, Router, iso, repo_for_read, repo_for_write
from .server import free_port
from .storage import FileEntry, Repo

log = logging.getLogger("localhub")
HARDWARE = (
    "cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
    "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8", "rtx-pro-6000",
    "rtx-pro-6000x2", "rtx-pro-6000x4", "rtx-pro-6000x8",
)
DEFAULT_HARDWARE = "cpu-basic"
FREE_SLEEP_TIME = 172800  # the Hub's fixed 48 h for cpu-basic
ALIVE = ("APP_STARTING", "RUNNING")
START_TIMEOUT_ENV = "LOCALHUB_SPACE_START_TIMEOUT"
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INHERITED_ENV = ("HOME", "PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
MAX_LOG_LINES = 10_000

# Runs first in the child: die with the supervisor thread (Linux), then become the app (exec keeps the pid).
_BOOTSTRAP = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("localhub exited before the app started")
os.execv(sys.argv[2], sys.argv[2:])
"""


class LogBuffer:
    """A run's log lines with their arrival times: in memory for the SSE route, and appended to a file."""

    def __init__(self, path: Path):
        self.lines: list[tuple[float, str]] = []
        self.base = 0  # index of lines[0] once old lines were trimmed
        self.done = False
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        with self.lock:
            if self.done:
                return
            self.lines.append((time.time(), text))
            if len(self.lines) > MAX_LOG_LINES:
                drop = len(self.lines) - MAX_LOG_LINES
                del self.lines[:drop]
                self.base += drop
            self.file.write(text)
            self.file.flush()

    def read(self, start: int) -> tuple[list[tuple[float, str]], int, bool]:
        """Lines from index `start` on, the next index, and whether no more lines will come."""
        with self.lock:
            lines = self.lines[max(0, start - self.base):]
            return lines, self.base + len(self.lines), self.done

    def tail(self, n: int) -> str:
        with self.lock:
            return "".join(t for _, t in self.lines[-n:]).strip()

    def finish(self) -> None:
        with self.lock:
            if not self.done:
                self.done = True
                self.file.close()


@dataclass
class SpaceState:
    """What the supervisor knows about one Space; `gen` grows with every request, so stale work is dropped."""

    gen: int = 0
    stage: str = "BUILDING"
    error: str | None = None
    port: int | None = None
    proc: subprocess.Popen | None = None
    deadline: float = 0.0
    build_log: LogBuffer | None = None
    run_log: LogBuffer | None = None
    reader: threading.Thread | None = None


class Spaces(Extension):
    def __init__(self, hub, start_timeout: float | None = None, resume: bool = True):
        self.hub, self.storage = hub, hub.storage
        self.root = Path(hub.data_dir) / "spaces"
        self.start_timeout = float(start_timeout or os.environ.get(START_TIMEOUT_ENV) or 120)
        self.resume = resume
        self.states: dict[str, SpaceState] = {}
        self.lock = threading.RLock()
        self.commands: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self.router = Router()
        sp = "/api/spaces/{ns}/{name}"
        self.router.add("GET", f"{sp}/runtime")(self._runtime_route)
        self.router.add("GET,POST,DELETE", f"{sp}/{{kind:secrets|variables}}")(self._settings_route)
        self.router.add("POST", f"{sp}/hardware")(self._hardware_route)
        self.router.add("POST", f"{sp}/sleeptime")(self._sleeptime_route)
        self.router.add("POST", f"{sp}/{{action:restart|pause}}")(self._lifecycle_route)
        self.router.add("GET", f"{sp}/logs/{{kind:run|build}}")(self._logs_route)
        self.thread = threading.Thread(target=self._supervise, name="localhub-spaces", daemon=True)
        self.thread.start()

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
                for item in body.get(kind) or []:
                    space[kind][_env_key(item.get("key"))] = _setting(item)
            if body.get("hardware"):
                space["hardware"] = _flavor(body["hardware"])
            if body.get("sleepTimeSeconds") is not None:
                space["sleepTime"] = int(body["sleepTimeSeconds"])
        except (HubError, TypeError, ValueError) as err:
            self.storage.delete_repo(repo)  # the core created it already: a rejected create leaves nothing behind
            raise err if isinstance(err, HubError) else HubError(400, None, f"Invalid Space settings: {err}")
        self.storage.update_repo(repo, space=space)
        # The Hub's initial commit has no app. "stop", not a fresh state: a deleted namesake may still be running.
        self._request(repo, "stop", "NO_APP_FILE")

    async def on_repo_deleted(self, repo: Repo) -> None:
        if repo.type == "space":
            self._request(repo, "remove", "DELETING")

    async def on_commit(self, repo: Repo, branch: str, oid: str) -> None:
        if repo.type == "space" and branch == "main" and not repo.space.get("paused"):
            self._request(repo, "deploy", "BUILDING")

    def _request(self, repo: Repo, action: str, stage: str) -> None:
        """Record the stage the caller should see now, and queue the work for the supervisor."""
        with self.lock:
            st = self.states.setdefault(repo.id, SpaceState())
            st.gen += 1
            st.stage, st.error = stage, None
            self.commands.put((action, repo.id, st.gen, stage))

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
            body = await ctx.request.json()
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
        body = await ctx.request.json()
        flavor = _flavor(body.get("flavor"))
        changed = flavor != (repo.space.get("hardware") or DEFAULT_HARDWARE)

        def change(s: dict) -> None:
            s["hardware"] = flavor
            if body.get("sleepTimeSeconds") is not None:
                s["sleepTime"] = int(body["sleepTimeSeconds"])

        repo = self._update(repo, change)
        if changed:
            self._redeploy(repo)
        return JSONResponse(self.runtime(repo))

    async def _sleeptime_route(self, ctx: Ctx) -> Response:
        repo = self._space(ctx, write=True)
        seconds = (await ctx.request.json()).get("seconds")
        if not isinstance(seconds, int):
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

    # ---- the supervisor --------------------------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self.hub.base_url and not self.closed.wait(0.05):
            pass  # the server sets base_url once it knows its port; apps need it as HF_ENDPOINT
        if self.resume:
            for repo in self.storage.list_repos("space"):
                with self.lock:
                    fresh = repo.id not in self.states
                if fresh and not repo.space.get("paused"):
                    self._request(repo, "deploy", "BUILDING")
        while not self.closed.is_set():
            try:
                command = self.commands.get(timeout=0.2)
            except queue.Empty:
                command = None
            try:
                if command:
                    self._handle(*command)
                self._poll()
            except Exception:  # a bug here must not stop supervising the other Spaces
                log.exception("space supervisor error (command %s)", command)

    def _current(self, sid: str, gen: int) -> SpaceState | None:
        with self.lock:
            st = self.states.get(sid)
            return st if st is not None and st.gen == gen else None

    def _set(self, sid: str, gen: int, stage: str, error: str | None = None) -> bool:
        with self.lock:
            st = self._current(sid, gen)
            if st is not None:
                st.stage, st.error = stage, error
                if stage not in ALIVE:
                    st.port = None
            if st is not None and st.build_log and stage not in ("BUILDING", "APP_STARTING"):
                st.build_log.finish()
            return st is not None

    def _handle(self, action: str, sid: str, gen: int, stage: str) -> None:
        st = self._current(sid, gen)
        if st is None:
            return  # superseded by a later request (on the same state, which then stops what runs)
        self._stop(st)
        if action == "stop":
            self._set(sid, gen, stage)
        elif action == "remove":
            with self.lock:
                if self._current(sid, gen):
                    del self.states[sid]
            shutil.rmtree(self.root / sid, ignore_errors=True)
        else:
            try:
                self._deploy(sid, st, gen)
            except Exception as err:
                log.exception("space %s: build failed", sid)
                self._set(sid, gen, "BUILD_ERROR", f"localhub could not build the Space: {err}")

    def _deploy(self, sid: str, st: SpaceState, gen: int) -> None:
        repo = self.storage.get_repo("space", sid)
        if repo is None:
            return
        oid, _ = self.storage.resolve(repo, "main")
        files = self.storage.tree(oid)
        space_dir = self.root / repo.namespace / repo.name
        run_dir = space_dir / "runs" / f"{time.time_ns()}-{oid[:8]}"
        if (space_dir / "runs").is_dir():
            for old in (space_dir / "runs").iterdir():
                shutil.rmtree(old, ignore_errors=True)
        app_dir = run_dir / "app"
        app_dir.mkdir(parents=True)
        build = LogBuffer(run_dir / "build.log")
        with self.lock:
            if self._current(sid, gen) is None:
                build.finish()
                return
            if st.build_log:
                st.build_log.finish()
            st.build_log, st.run_log = build, None
        build.write(f"===== Build queued at {iso(time.time())} / Commit SHA: {oid} =====\n")
        config, error = self._card(files)
        if error:
            build.write(error + "\n")
            self._set(sid, gen, "CONFIG_ERROR", error)
            return
        self._materialise(files, app_dir, build)
        sdk = config.get("sdk") or repo.sdk or "gradio"
        stage, message, argv = self._command(sdk, config, app_dir)
        if stage:
            build.write(message + "\n")
            self._set(sid, gen, stage, message)
            return
        if (app_dir / "requirements.txt").is_file():
            build.write(f"requirements.txt: not installed (localhub is offline); the app runs with {sys.executable}\n")
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in argv]
        run = LogBuffer(run_dir / "run.log")
        run.write(f"===== Application Startup at {iso(time.time())} =====\n")
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), sys.executable, *argv], cwd=app_dir,
            env=self._env(repo, port, space_dir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        reader = threading.Thread(target=_pump, args=(proc, run), name=f"space-log-{sid}", daemon=True)
        reader.start()
        build.write(f"Starting {' '.join(argv)} on 127.0.0.1:{port} (pid {proc.pid})\n")
        with self.lock:
            current = self._current(sid, gen) is not None
            if current:
                st.proc, st.reader, st.run_log, st.port = proc, reader, run, port
                st.stage, st.deadline = "APP_STARTING", time.monotonic() + self.start_timeout
        if not current:
            _terminate(proc)
        log.info("space %s: started pid %d on port %d (commit %s)", sid, proc.pid, port, oid[:8])

    def _card(self, files: dict[str, FileEntry]) -> tuple[dict, str | None]:
        readme = files.get("README.md")
        if readme is None:
            return {}, None
        text = self.storage.blob_path(readme.sha256).read_text(errors="replace")
        if not text.startswith("---"):
            return {}, None
        try:
            data = yaml.safe_load(text.split("---", 2)[1])
        except yaml.YAMLError as err:
            return {}, f"Invalid YAML in README.md front matter: {err}"
        if data is not None and not isinstance(data, dict):
            return {}, "README.md front matter must be a YAML mapping"
        return data or {}, None

    def _materialise(self, files: dict[str, FileEntry], app_dir: Path, build: LogBuffer) -> None:
        root, total = app_dir.resolve(), 0
        for path, entry in sorted(files.items()):
            dest = (app_dir / path).resolve()
            if not dest.is_relative_to(root) or dest == root:
                build.write(f"skipped {path!r}: outside the app folder\n")
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.storage.blob_path(entry.sha256), dest)  # a copy: the app may write to its files
            total += entry.size
        build.write(f"{len(files)} files ({total} bytes) checked out\n")

    @staticmethod
    def _command(sdk: str, config: dict, app_dir: Path) -> tuple[str | None, str, list[str]]:
        """(error stage or None, message, argv after the python executable; "{port}" is filled in)."""
        default = {"static": "index.html"}.get(sdk, "app.py")
        app_file = str(config.get("app_file") or default)
        path = (app_dir / app_file).resolve()
        if not path.is_relative_to(app_dir.resolve()):
            return "CONFIG_ERROR", f"app_file {app_file!r} is outside the repository", []
        if sdk not in ("gradio", "static", "docker", "streamlit"):
            return "CONFIG_ERROR", f"Unknown sdk {sdk!r}: localhub runs gradio, static, streamlit and python apps", []
        if not path.is_file():
            if sdk == "docker" and (app_dir / "Dockerfile").is_file():
                return "BUILD_ERROR", (f"localhub runs Docker Spaces without Docker: it needs a python app_file "
                                       f"({app_file}) that serves $PORT"), []
            return "NO_APP_FILE", f"No application file: {app_file}", []
        if sdk == "static":
            return None, "", ["-m", "http.server", "{port}", "--bind", "127.0.0.1"]
        if sdk == "streamlit":
            if importlib.util.find_spec("streamlit") is None:
                return "BUILD_ERROR", "streamlit is not installed in localhub's Python", []
            return None, "", ["-m", "streamlit", "run", app_file, "--server.port", "{port}",
                              "--server.address", "127.0.0.1", "--server.headless", "true"]
        if not app_file.endswith(".py"):
            return "BUILD_ERROR", f"app_file {app_file!r} is not a python file", []
        return None, "", [app_file]

    def _env(self, repo: Repo, port: int, space_dir: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        for kind in ("variables", "secrets"):
            env.update({k: str(v.get("value", "")) for k, v in repo.space.get(kind, {}).items()})
        env.update(
            HF_ENDPOINT=self.hub.base_url, HF_HOME=str(space_dir / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1", SPACE_ID=repo.id, SPACE_AUTHOR_NAME=repo.namespace, SPACE_REPO_NAME=repo.name,
            SPACE_HOST=f"127.0.0.1:{port}", SYSTEM="spaces", PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
        )
        return env

    def _poll(self) -> None:
        with self.lock:
            live = [(sid, st.gen, st) for sid, st in self.states.items() if st.proc is not None and st.stage in ALIVE]
        for sid, gen, st in live:
            rc = st.proc.poll()  # type: ignore[union-attr]
            if rc is not None:
                if st.reader:
                    st.reader.join(2)  # the last lines are the reason
                tail = st.run_log.tail(20) if st.run_log else ""
                st.proc = None
                self._set(sid, gen, "RUNTIME_ERROR", f"Exit code: {rc}. Reason: {tail}")
                log.info("space %s: app exited with %s", sid, rc)
            elif st.stage == "APP_STARTING" and _answers(st.port):
                self._set(sid, gen, "RUNNING")
                log.info("space %s: running on port %s", sid, st.port)
            elif st.stage == "APP_STARTING" and time.monotonic() > st.deadline:
                self._stop(st)
                tail = st.run_log.tail(20) if st.run_log else ""
                self._set(sid, gen, "RUNTIME_ERROR", f"Launch timed out: the app did not answer HTTP within "
                                                     f"{self.start_timeout:g} s. Last logs: {tail}")

    def _stop(self, st: SpaceState) -> None:
        proc, st.proc = st.proc, None
        if proc is not None:
            _terminate(proc)
        if st.reader:
            st.reader.join(2)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(15)
        with self.lock:
            states = list(self.states.values())
        for st in states:  # signal every app first, then wait: shutdown takes one grace period, not one per app
            if st.proc is not None and st.proc.poll() is None:
                _signal_group(st.proc, signal.SIGTERM)
        for st in states:
            self._stop(st)


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


def _pump(proc: subprocess.Popen, buf: LogBuffer) -> None:
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        buf.write(raw.decode("utf-8", errors="replace"))
    proc.stdout.close()
    buf.finish()


def _answers(port: int | None, timeout: float = 5.0) -> bool:
    """Does something speak HTTP on the port? (a raw probe: an HTTP client would log every attempt)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            head, received = sock.recv(5), 0
            while (chunk := sock.recv(1 << 16)) and received < (1 << 22):  # read it all: an early close makes
                received += len(chunk)                                     # the app log a connection reset
            return head == b"HTTP/"
    except OSError:
        return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the app's own session: its children go too
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _env_key(key) -> str:
    if not isinstance(key, str) or not ENV_KEY_RE.match(key):
        raise HubError(400, None, f"Invalid key {key!r}: letters, digits and underscores, not starting with a digit")
    return key


def _setting(item: dict) -> dict:
    if not isinstance(item.get("value"), str):
        raise HubError(400, None, f"A value (string) is required for {item.get('key')!r}")
    return {"value": item["value"], "description": item.get("description"), "updatedAt": iso(time.time())}


def _flavor(flavor) -> str:
    if flavor not in HARDWARE:
        raise HubError(400, None, f"Invalid hardware flavor {flavor!r}: one of {', '.join(HARDWARE)}")
    return flavor
