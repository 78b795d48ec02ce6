"""An HTTP inference server for one model: the Hugging Face and OpenAI protocols, dynamic batching, health, metrics.

    python server.py --model ns/name --revision SHA --token-file TOKEN [--port 8000] [--handler handler.py]
    python server.py --model ./model-folder --public --max-batch-tokens 8192 --max-wait-ms 5

ONE self-contained file (stdlib, fastapi/starlette, uvicorn, prometheus_client, torch, transformers, huggingface_hub;
never hubflow): an endpoint Space's `app.py` is a byte copy of it and `hubflow serve` runs it as is. The model's kind
answers through a handler file (`handler.py` next to this one: a copy of `hubflow/kinds/<kind>/serve.py`) that
defines `create_handler(model_dir, kit)`; `kit` is everything a handler needs from here (docs/serving.md, "The
kit"). Every option also comes from an environment variable (SERVE_*): a Space gets variables, not argv.

Lifecycle: bind the port at once (503 on /health while the model downloads and loads in a thread), then 200; on
SIGTERM stop accepting, let in-flight requests finish (at most --drain-seconds), stop the handler, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

SERVER_VERSION = "1.0.0"
log = logging.getLogger("hubflow.serve")
OPEN_ROUTES = {"/health", "/metrics"}  # probes and scrapers: no token, no model data

# (option, type, default, help); env var: SERVE_<OPTION>. Booleans are flags; env "1"/"true"/"yes" sets them.
OPTIONS = [
    ("model", str, None, "a local model folder, or a Hub repo ns/name[@revision]"),
    ("revision", str, "main", "Hub revision (branch, tag or sha) when --model is a repo"),
    ("task", str, None, "the model's kind when its folder has no hubflow.json"),
    ("host", str, "127.0.0.1", "bind address (a Docker Space needs 0.0.0.0)"),
    ("port", int, None, "port (default $PORT, else 8000; 0: any free port)"),
    ("fd", int, None, "an already bound, listening socket's file descriptor (overrides host and port)"),
    ("handler", str, None, "the kind's handler file (default: handler.py next to this file)"),
    ("token-file", str, None, "a file holding the bearer token callers must send (or env SERVE_TOKEN)"),
    ("public", bool, False, "serve without auth"),
    ("hub-token-file", str, None, "a file holding a Hub token to download a private model (read-only use)"),
    ("max-batch-tokens", int, 8192, "padded tokens per batch (rows x longest row)"),
    ("max-batch-size", int, 32, "rows per batch"),
    ("max-forward-tokens", int, 512, "padded tokens per forward pass: a batch's length-sorted rows are cut into "
                                      "passes of similar width (padding costs compute on a CPU)"),
    ("max-wait-ms", float, 5.0, "how long a batch's first item waits for company"),
    ("max-queue", int, 256, "items waiting; one more is answered 429 with Retry-After"),
    ("max-body-bytes", int, 1 << 20, "largest request body; larger is answered 413"),
    ("precision", str, "auto", "auto (GPU: bf16, CPU: fp32), fp32, or int8 (CPU), as hubflow's batch inference"),
    ("on-too-long", str, "truncate", "an input over the model's limit: truncate (as batch inference) or refuse"),
    ("drain-seconds", float, 30.0, "on SIGTERM, how long in-flight requests may take to finish"),
    ("parallel-passes", int, 1, "forward passes of one batch run at once, each in a thread of its own (each with "
                                "--threads intra-op threads)"),
    ("threads", int, None, "torch intra-op threads (default: the CPUs this process may use: the cgroup's CPU quota "
                           "(a k8s pod's limit), else its CPU affinity)"),
    ("sample-rate", float, 0.0, "the share of served rows (inputs and predictions, never tokens or headers) logged to "
                                "--sample-to for the monitor; 0: off"),
    ("sample-to", str, None, "where sampled rows go: a folder or an fsspec URI (s3://...); JSON-lines files"),
    ("sample-seconds", float, 60.0, "a file of sampled rows is written this often (and per 1,000 rows)"),
]
CHOICES = {"precision": ("auto", "fp32", "int8"), "on_too_long": ("truncate", "refuse")}


def parse_settings(argv: list[str] | None = None) -> argparse.Namespace:
    """argv and SERVE_* environment variables -> settings; argv wins. A bad value exits with one line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, kind, default, text in OPTIONS:
        dest = name.replace("-", "_")
        env = os.environ.get("SERVE_" + dest.upper())
        if kind is bool:
            parser.add_argument("--" + name, action="store_true",
                                default=(env or "").lower() in ("1", "true", "yes"), help=text)
            continue
        try:
            value = kind(env) if env not in (None, "") else default
        except ValueError:
            parser.error(f"SERVE_{dest.upper()}={env!r} is not a {kind.__name__}")
        parser.add_argument("--" + name, type=kind, default=value, choices=CHOICES.get(dest), help=text)
    s = parser.parse_args(argv)
    if s.model and "@" in s.model and not Path(s.model).exists():
        s.model, s.revision = s.model.split("@", 1)
    if s.port is None:
        s.port = int(os.environ.get("PORT") or 8000)
    if s.threads is None:
        s.threads = cpu_budget()
    for name in ("max_batch_tokens", "max_batch_size", "max_forward_tokens", "max_queue", "max_body_bytes", "threads",
                 "parallel_passes"):
        if getattr(s, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= s.sample_rate <= 1 or (s.sample_rate and not s.sample_to):
        parser.error("--sample-rate must be between 0 and 1, and a rate above 0 needs --sample-to")
    if not s.model:
        parser.error("--model (or SERVE_MODEL) is required: a model folder or a Hub repo ns/name")
    return s


def cpu_budget() -> int:
    """The CPUs this process may use: the cgroup v2 quota (`cpu.max`, a k8s pod's CPU limit, rounded up), else
    the CPU affinity. Torch alone would take every core of the node, and threads past the quota only wait on the
    scheduler: on a busy host 2 threads on 2 shared cores ran 1.4-11x slower than 1 (docs/benchmarks.md)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


# ---------------------------------------------------------------- errors, auth, request bodies
class ServeError(Exception):
    """An answer to the client: HTTP `status` with `{"error": message}`; never a traceback."""

    def __init__(self, status: int, message: str, headers: dict | None = None, error_type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.error_type = error_type or {400: "bad_request", 401: "unauthorized", 413: "payload_too_large",
                                         422: "input_too_long", 429: "overloaded", 503: "unavailable"}.get(
            status, "error")


def error_body(status: int, message: str, error_type: str = "error") -> bytes:
    return json.dumps({"error": message, "error_type": error_type}).encode()


def read_token(settings) -> str | None:
    """The bearer token callers must send: --token-file's content, else env SERVE_TOKEN; None when --public."""
    if settings.public:
        return None
    token = None
    if settings.token_file:
        try:
            token = Path(settings.token_file).read_text().strip()
        except OSError as err:
            sys.exit(f"server: cannot read --token-file {settings.token_file}: {err.strerror}")
    token = token or os.environ.get("SERVE_TOKEN", "").strip()
    if not token:
        sys.exit("server: no token to check callers against: give --token-file (or SERVE_TOKEN), or --public")
    return token


async def json_body(request) -> dict:
    """The request's JSON object; ServeError 413 past --max-body-bytes (counted, whatever Content-Length says) and
    400 for anything that is not a JSON object."""
    limit = request.app.state.settings.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"the request body is over the server's limit of {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise ServeError(400, "the request body is empty: send a JSON object")
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as err:
        raise ServeError(400, f"the request body is not valid JSON ({str(err).split(':')[0]})") from None
    if not isinstance(body, dict):
        raise ServeError(400, f"the request body must be a JSON object, not a {type(body).__name__}")
    return body


def too_long(n_tokens: int, limit: int) -> ServeError:
    return ServeError(422, f"an input is {n_tokens} tokens, over this model's limit of {limit} (the server refuses "
                           "long inputs; shorten it, or run the server with --on-too-long truncate)")


# ---------------------------------------------------------------- metrics
def make_metrics():
    """The server's Prometheus collectors, in a registry of their own (served at /metrics)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

    reg = CollectorRegistry()
    ProcessCollector(registry=reg)  # resident memory, CPU seconds: what a load test watches for leaks
    latency = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
    return SimpleNamespace(
        registry=reg,
        requests=Counter("requests", "HTTP requests by route and status", ["route", "status"], registry=reg),
        request_seconds=Histogram("request_seconds", "request latency", ["route"], buckets=latency, registry=reg),
        queue_depth=Gauge("queue_depth", "items waiting to be batched", ["queue"], registry=reg),
        batch_size=Histogram("batch_size", "rows per model call", ["queue"],
                             buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=reg),
        batch_tokens=Histogram("batch_tokens", "padded tokens per model call", ["queue"],
                               buckets=(64, 256, 1024, 4096, 8192, 16384, 65536), registry=reg),
        time_to_first_token=Histogram("time_to_first_token_seconds", "time to the first generated token",
                                      buckets=latency, registry=reg),
        generated_tokens=Counter("generated_tokens", "tokens generated", registry=reg),
        prompt_tokens=Counter("prompt_tokens", "prompt tokens read", registry=reg),
    )


# ---------------------------------------------------------------- the dynamic batcher
class Batcher:
    """One bounded queue; a worker forms batches (token budget, row limit, wait limit) and runs `run_batch` in a
    thread of its own, so the event loop keeps accepting requests while the model computes.

    A batch's rows are sorted longest first and cut into forward passes of similar width (at most
    `max_forward_tokens` padded tokens each, as hubflow's batch inference cuts its batches): one pass padded to the
    batch's longest row computed ~3x the real tokens of the demo's texts. `run_batch(items) -> results` gets one
    pass's items, longest first, and returns one result per item in that order; a result that is an exception goes
    to that item's caller alone. A pass's callers are answered before the next pass runs."""

    def __init__(self, run_batch, *, name: str = "default", settings=None, metrics=None, max_batch_tokens=None,
                 max_batch_size=None, max_wait_ms=None, max_queue=None, max_forward_tokens=None):
        s = settings
        self.run_batch, self.name, self.metrics = run_batch, name, metrics
        self.max_batch_tokens = max_batch_tokens or s.max_batch_tokens
        self.max_forward_tokens = max_forward_tokens or getattr(s, "max_forward_tokens", None) or 512
        self.parallel = getattr(s, "parallel_passes", None) or 1
        self.max_batch_size = max_batch_size or s.max_batch_size
        self.max_wait = (max_wait_ms if max_wait_ms is not None else s.max_wait_ms) / 1000
        self.max_queue = max_queue or s.max_queue
        self.queue: collections.deque = collections.deque()  # (arrival, tokens, item, future)
        self.wakeup = asyncio.Event()
        self.worker = None
        self.stopping = False
        self.batch_seconds = 0.05  # running mean of a batch's compute time: Retry-After's estimate

    @property
    def depth(self) -> int:
        return len(self.queue)

    async def submit(self, item, tokens: int):
        """Queue `item` (its padded length `tokens`) and wait for its result; 429 when the queue is full."""
        if self.stopping:
            raise ServeError(503, "the server is shutting down", {"Retry-After": "1"})
        if len(self.queue) >= self.max_queue:
            batches = len(self.queue) / self.max_batch_size + 1
            retry = max(1, round(batches * self.batch_seconds))
            raise ServeError(429, f"the server is busy ({len(self.queue)} inputs queued); retry in {retry} s",
                             {"Retry-After": str(retry)})
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        self.queue.append((time.monotonic(), max(int(tokens), 1), item, future))
        self._gauge()
        self.wakeup.set()
        return await future

    def _gauge(self):
        if self.metrics:
            self.metrics.queue_depth.labels(self.name).set(len(self.queue))

    def _take(self) -> list:
        """The longest FIFO prefix of the queue that fits the budget (rows x longest row <= max_batch_tokens)."""
        batch, longest = [], 0
        while self.queue and len(batch) < self.max_batch_size:
            entry = self.queue[0]
            if entry[3].done():  # the caller went away (cancelled): nothing to compute
                self.queue.popleft()
                continue
            width = max(longest, entry[1])
            if batch and width * (len(batch) + 1) > self.max_batch_tokens:
                break
            batch.append(self.queue.popleft())
            longest = width
        return batch

    def _full(self) -> bool:
        if len(self.queue) >= self.max_batch_size:
            return True
        longest = max(e[1] for e in self.queue)
        return longest * len(self.queue) >= self.max_batch_tokens

    async def _work(self):
        loop = asyncio.get_running_loop()
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix=f"batch-{self.name}")
        try:
            while True:
                while not self.queue:
                    if self.stopping:
                        return
                    self.wakeup.clear()
                    await self.wakeup.wait()
                # Wait for company until the first item has waited max_wait (or the batch is full already).
                while not self._full() and (left := self.queue[0][0] + self.max_wait - time.monotonic()) > 0:
                    self.wakeup.clear()
                    try:
                        await asyncio.wait_for(self.wakeup.wait(), left)
                    except asyncio.TimeoutError:  # (a builtin TimeoutError only from Python 3.11)
                        break
                batch = self._take()
                self._gauge()
                if not batch:
                    continue
                batch.sort(key=lambda e: -e[1])
                started = time.monotonic()
                # Passes queue on the pool in order (longest first); with one thread they run one after another.
                await asyncio.gather(*(self._run(loop, pool, part) for part in self._passes(batch)))
                self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (time.monotonic() - started)
        finally:
            pool.shutdown(wait=False)

    def _passes(self, batch: list) -> list[list]:
        """Sorted rows (longest first) -> consecutive runs of at most max_forward_tokens padded tokens each."""
        parts, i = [], 0
        while i < len(batch):
            size = max(1, self.max_forward_tokens // batch[i][1])  # sorted: a pass's first row is its longest
            parts.append(batch[i:i + size])
            i += size
        return parts

    async def _run(self, loop, pool, batch):
        def call(entries):  # in the pool's thread, when the pass's turn comes
            live = [e for e in entries if not e[3].done()]  # callers gone while an earlier pass ran: not computed
            return live, (self.run_batch([e[2] for e in live]) if live else [])

        try:
            batch, results = await loop.run_in_executor(pool, call, batch)
            if not batch:
                return
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception as err:  # noqa: BLE001 - every caller of this batch gets the error
            results = [err] * len(batch)
        if self.metrics:
            self.metrics.batch_size.labels(self.name).observe(len(batch))
            self.metrics.batch_tokens.labels(self.name).observe(len(batch) * batch[0][1])
        for entry, result in zip(batch, results):
            if entry[3].done():
                continue
            if isinstance(result, BaseException):
                entry[3].set_exception(result)
            else:
                entry[3].set_result(result)

    async def stop(self):
        """Finish what is queued, then end the worker."""
        self.stopping = True
        self.wakeup.set()
        if self.worker is not None:
            await self.worker


# ---------------------------------------------------------------- precision (as hubflow/devices.py chooses it)
class Sampler:
    """--sample-rate of the served rows -> JSON-lines files in --sample-to (a folder, or an fsspec URI such as
    s3://bucket/served), a dataset the monitor reads (split "served"). Handlers call `kit.sample(route, inputs,
    outputs)`: one dict per row each (the input text; the prediction); a row is kept with probability `rate`, stamped
    with its time (epoch s), the route and the model's id and sha. Never the caller's token or headers: handlers pass
    only what they answer from. A thread writes a file per `rows` rows or per `seconds`, whichever comes first, named
    `served-<UTC time>-<pid>-<seq>.jsonl` and written whole (a hidden .part renamed; an object store's object appears
    on close), so a reader never sees half a file; what is left is written on shutdown."""

    def __init__(self, rate: float, dest: str, model: dict, rows: int = 1000, seconds: float = 60.0):
        import random
        import threading

        self.rate, self.dest, self.rows, self.seconds = rate, dest.rstrip("/"), rows, seconds
        self.stamp = {"model_id": model.get("id"), "model_sha": model.get("sha")}
        self.buffer: list[dict] = []
        self.opened, self.seq, self.random = time.monotonic(), 0, random.Random()
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self.thread.start()

    def add(self, route: str, inputs: list[dict], outputs: list[dict]) -> None:
        now = round(time.time(), 3)
        kept = [{"time": now, "route": route, **self.stamp, **i, **o} for i, o in zip(inputs, outputs)
                if self.random.random() < self.rate]
        if kept:
            with self.lock:
                self.buffer.extend(kept)

    def _loop(self) -> None:
        while not self.stopping.wait(0.5):
            with self.lock:
                due = len(self.buffer) >= self.rows or (self.buffer and time.monotonic() - self.opened >= self.seconds)
            if due:
                self.flush()

    def flush(self) -> None:
        with self.lock:
            rows, self.buffer, self.opened = self.buffer[:self.rows], self.buffer[self.rows:], time.monotonic()
        if not rows:
            return
        self.seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(rows[0]["time"]))
        name = f"served-{stamp}-{os.getpid()}-{self.seq:05d}.jsonl"  # sorted by name = by time, per process
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        try:
            if "://" in self.dest:
                import fsspec

                with fsspec.open(f"{self.dest}/{name}", "w") as f:
                    f.write(data)
            else:
                Path(self.dest).mkdir(parents=True, exist_ok=True)
                part = Path(self.dest, f".{name}.part")
                part.write_text(data)
                os.replace(part, Path(self.dest, name))
        except Exception as err:  # noqa: BLE001 - sampling never fails a request or the server: one line, rows dropped
            log.warning("sample: %d rows not written to %s: %s", len(rows), self.dest, str(err).splitlines()[0])

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        while self.buffer:
            self.flush()


def device_and_dtype(precision: str):
    """(device, dtype) as hubflow's batch inference picks them; torch.qint8 stands for int8 (load fp32, quantize)."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "int8":
        if cuda:
            sys.exit("server: --precision int8 is for CPU (int8 linear layers have no CUDA kernels); use auto")
        return torch.device("cpu"), torch.qint8
    if precision == "fp32":
        return torch.device("cuda" if cuda else "cpu"), torch.float32
    if cuda:
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


def quantize_int8(module, per_channel: bool = False):
    """`module`'s nn.Linear layers to dynamic int8, in place (per-tensor or per-channel weight scales), as
    hubflow's batch inference quantizes the same model."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {torch.nn.Linear: per_channel_dynamic_qconfig} if per_channel else {torch.nn.Linear}
    with warnings.catch_warnings():  # torch.ao.quantization is marked deprecated; it ships and runs
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated", category=UserWarning)
        quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)
    return module


# ---------------------------------------------------------------- the model and its handler
def resolve_model(settings) -> tuple[str, dict]:
    """--model -> (local folder, model_info). A Hub repo is downloaded (HF_ENDPOINT, a read-only token)."""
    folder = Path(settings.model).expanduser()
    if folder.is_dir():
        info = {"id": settings.model, "sha": None, "revision": None, "path": str(folder.resolve())}
    else:
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", settings.model):
            raise ValueError(f"--model {settings.model!r} is neither a folder nor a Hub repo id (ns/name)")
        from huggingface_hub import snapshot_download

        token = Path(settings.hub_token_file).read_text().strip() if settings.hub_token_file else None
        path = snapshot_download(settings.model, revision=settings.revision, token=token)
        info = {"id": settings.model, "sha": Path(path).name, "revision": settings.revision, "path": path}
    facts_file = Path(info["path"], "hubflow.json")
    facts = json.loads(facts_file.read_text()) if facts_file.exists() else {}
    task = settings.task or facts.get("task") or guess_task(Path(info["path"]))
    info["task"] = facts["task"] = task
    return info["path"], {**info, "facts": facts}


def guess_task(folder: Path) -> str:
    """A model without hubflow.json: a sentence-transformers folder embeds; else config.json's architecture says."""
    if (folder / "modules.json").exists():
        return "sentence-embedding"
    archs = json.loads((folder / "config.json").read_text()).get("architectures") or [""]
    if archs[0].endswith("ForCausalLM"):
        return "causal-lm"
    if archs[0].endswith("ForSequenceClassification"):
        return "text-classification"
    raise ValueError(f"{folder}: no hubflow.json and no recognizable architecture ({archs[0]!r}): pass --task")


def load_handler(path: str | Path, model_dir: str, kit):
    """Import the handler file and call its `create_handler(model_dir, kit)`."""
    spec = importlib.util.spec_from_file_location("serve_handler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_handler(model_dir, kit)


# ---------------------------------------------------------------- the app
class Guard:
    """ASGI middleware in front of every route: readiness, bearer auth, the declared body size, and the request
    metrics (route template or "other", status, latency). Pure ASGI, so streamed answers pass through untouched."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, st = scope["path"], self.state
        route = path if path in st.routes else "other"
        started, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self.refusal(scope, path)
            if refusal:
                await respond(sending, *refusal)
            else:
                await self.app(scope, receive, sending)
        finally:
            st.metrics.requests.labels(route, str(status[0])).inc()
            st.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)

    def refusal(self, scope, path):
        st = self.state
        if path in OPEN_ROUTES:
            return None
        if st.token is not None:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            # compare_digest: the time taken does not say how much of a guess was right
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), st.token.encode()):
                return 401, "a valid bearer token is required (Authorization: Bearer <token>)", {
                    "WWW-Authenticate": "Bearer"}, "unauthorized"
        if st.status != "ready":
            return 503, f"the model is {st.status}; retry shortly", {"Retry-After": "5"}, "unavailable"
        length = dict(scope["headers"]).get(b"content-length")
        if length and length.isdigit() and int(length) > st.settings.max_body_bytes:
            return 413, f"the request body is over the server's limit of {st.settings.max_body_bytes} bytes", {}, \
                "payload_too_large"
        return None


async def respond(send, status: int, message: str, headers: dict, error_type: str = "error"):
    body = error_body(status, message, error_type)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def build_app(settings, token: str | None):
    """The FastAPI app: the server's own routes now, the handler's once the model is loaded."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    state = SimpleNamespace(settings=settings, token=token, status="loading", handler=None, info={},
                            metrics=make_metrics(), routes=set(OPEN_ROUTES | {"/info"}), error=None)

    @asynccontextmanager
    async def lifespan(app):
        loader = asyncio.get_running_loop().create_task(load(app, state))
        yield
        state.status = "draining"
        loader.cancel()
        if state.handler is not None and hasattr(state.handler, "stop"):
            await state.handler.stop()
        if getattr(state, "sampler", None) is not None:
            state.sampler.close()  # the rows still buffered

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.serve = settings, state

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return JSONResponse({"error": err.message, "error_type": err.error_type}, err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}", "error_type": "bad_request"},
                            400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return JSONResponse({"error": message.get(err.status_code, str(err.detail)), "error_type": "not_found"
                             if err.status_code == 404 else "bad_request"},
                            err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception):
        log.exception("internal error on %s", request.url.path)  # the log has the traceback; the caller does not
        return JSONResponse({"error": "internal server error", "error_type": "internal"}, 500)

    @app.get("/health")
    async def health():
        code = 200 if state.status == "ready" else 503
        return JSONResponse({"status": state.status, **({"error": state.error} if state.error else {})}, code)

    @app.get("/info")
    async def info():
        return {**state.info, **(state.handler.info() if state.handler else {})}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Guard(app, state), app, state


async def load(app, state):
    """Resolve and load the model in a thread (the server answers /health meanwhile), then mount the handler."""
    s = state.settings
    try:
        model_dir, info = await asyncio.to_thread(resolve_model, s)
        device, dtype = device_and_dtype(s.precision)
        facts = info.pop("facts")
        state.sampler = Sampler(s.sample_rate, s.sample_to, info, seconds=s.sample_seconds) if s.sample_rate else None
        kit = SimpleNamespace(settings=s, model_info=info, facts=facts, device=device, dtype=dtype,
                              ServeError=ServeError, json_body=json_body, too_long=too_long, metrics=state.metrics,
                              quantize_int8=quantize_int8,
                              sample=state.sampler.add if state.sampler else lambda route, inputs, outputs: None,
                              Batcher=lambda run, **kw: Batcher(run, settings=s, metrics=state.metrics, **kw))
        handler_file = s.handler or Path(__file__).with_name("handler.py")
        handler = await asyncio.to_thread(load_handler, handler_file, model_dir, kit)
        if hasattr(handler, "start"):
            await handler.start()
        app.include_router(handler.router)
        state.routes |= {r.path for r in handler.router.routes}
        state.info = {"model_id": info["id"], "model_sha": info["sha"], "revision": info["revision"],
                      "task": info["task"], "server_version": SERVER_VERSION, "precision": s.precision,
                      "device": str(device), "pid": os.getpid(), "threads": s.threads,
                      "batching": {k: getattr(s, k) for k in ("max_batch_tokens", "max_batch_size",
                                                              "max_forward_tokens", "parallel_passes", "max_wait_ms",
                                                              "max_queue")},
                      "limits": {"max_body_bytes": s.max_body_bytes, "on_too_long": s.on_too_long}}
        state.handler, state.status = handler, "ready"
        log.info("ready: %s (%s) at %s", info["id"], info["task"], info["sha"] or info["path"])
    except Exception as err:  # noqa: BLE001 - one line in the log and on /health, then the process exits non-zero
        state.status, state.error = "failed", f"{type(err).__name__}: {err}".splitlines()[0]
        log.error("cannot serve %s: %s", s.model, state.error)
        state.failed = True
        signal.raise_signal(signal.SIGTERM)


def bind(settings) -> socket.socket:
    """The listening socket: an inherited fd (bound before anyone was told the port), else host:port."""
    if settings.fd is not None:
        return socket.socket(fileno=settings.fd)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    return sock


def set_threads(n: int) -> None:
    """Torch's intra-op threads = n (every forward pass uses them); inter-op threads = 1: the batcher runs one pass
    at a time, so a second pool would only add threads competing for the same cores."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (a test that calls main() twice in one process)
        pass


def main(argv: list[str] | None = None) -> None:
    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)  # a server's log is lines, not progress bars
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = parse_settings(argv)
    token = read_token(settings)
    set_threads(settings.threads)
    import uvicorn

    asgi, app, state = build_app(settings, token)
    try:
        sock = bind(settings)
    except OSError as err:
        sys.exit(f"server: cannot listen on {settings.host}:{settings.port}: {err.strerror}")
    host, port = sock.getsockname()[:2]
    print(f"serving http://{host}:{port}", flush=True)  # the line a caller waits for (port 0: the one bound)
    config = uvicorn.Config(asgi, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=settings.drain_seconds, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it shut down on once done; with this no-op handler the process then exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    sys.exit(1 if getattr(state, "failed", False) else 0)


if __name__ == "__main__":
    main()
