"""The serving core (hubflow/serving/server.py) and the classifier handler, as real processes on loopback.

Three server processes on a tiny BERT classifier (hubflow.json facts, max_length 16): replicas A and B
(`python server.py`, a token file) behind one address (a round-robin TCP proxy, as a Service spreads connections),
and S, started through `hubflow serve FOLDER` with a long batching wait, a queue of 2 and long inputs refused (the
429, 422 and SIGTERM-drain checks). Callers are the unmodified `huggingface_hub.InferenceClient` and plain HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve_procs import ServerProcess
from tests.tiny import LABELS, make_tiny_bert, synthetic_rows

HANDLER = Path(__file__).resolve().parent.parent / "hubflow" / "kinds" / "text_classification" / "serve.py"
MAX_LENGTH = 16
TOKEN = "serve-test-token-0123456789"
LONG = " ".join(["goal match rain market"] * 20)  # 80 words: over MAX_LENGTH tokens


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory) -> Path:
    from hubflow.kinds.text_classification.settings import ClassifierFacts
    from hubflow.stages.facts import write_facts

    folder = make_tiny_bert(tmp_path_factory.mktemp("clf") / "model")
    config = json.loads((folder / "config.json").read_text())
    config.update(id2label={str(i): n for i, n in enumerate(LABELS)}, label2id={n: i for i, n in enumerate(LABELS)})
    (folder / "config.json").write_text(json.dumps(config))
    write_facts(folder, ClassifierFacts(max_length=MAX_LENGTH, label_names=LABELS))
    return folder


@pytest.fixture(scope="module")
def servers(clf_dir, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN + "\n")
    auth = ("--token-file", str(token_file))
    procs = {
        # a small forward budget: a batch's rows run in several length-sorted passes (two at once), answers unchanged
        "a": ServerProcess.script(clf_dir, HANDLER, *auth, "--max-wait-ms", "20", "--max-forward-tokens", "64",
                                  "--threads", "1", "--parallel-passes", "2"),
        # B is configured as a Space is, by variables: the token is a secret in its environment
        "b": ServerProcess.script(clf_dir, HANDLER, env={"SERVE_TOKEN": TOKEN, "SERVE_MAX_WAIT_MS": "20",
                                                         "SERVE_MAX_FORWARD_TOKENS": "64", "SERVE_THREADS": "1",
                                                         "SERVE_PARALLEL_PASSES": "2"}),
        "s": ServerProcess.cli(clf_dir, *auth, "--max-wait-ms", "1500", "--max-queue", "2",
                               "--on-too-long", "refuse", "--precision", "int8"),
    }
    try:
        ServerProcess.wait_all(list(procs.values()))
        with RoundRobin([procs["a"].url, procs["b"].url]) as proxy:
            yield type("Servers", (), {**procs, "proxy": proxy.url})
    finally:
        for p in procs.values():
            if p.proc.poll() is None:
                p.proc.terminate()  # all at once: they drain in parallel
        for p in procs.values():
            p.stop()


class RoundRobin:
    """A TCP proxy on loopback handing each new connection to the next backend in turn (what a Service does)."""

    def __init__(self, backends: list[str]):
        self.backends = itertools.cycle([b.rsplit(":", 1)[1] for b in backends])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RoundRobin:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.handle, "127.0.0.1", 0), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def handle(self, reader, writer):
        try:
            await self.relay(reader, writer)
        except asyncio.CancelledError:  # the proxy is closing: end quietly
            writer.close()

    async def relay(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(next(self.backends)))

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    def __exit__(self, *exc):
        async def shutdown():
            self.server.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_answers_equal_hubflows_batch_predictions_through_inference_client(servers, clf_dir):
    from huggingface_hub import InferenceClient

    from hubflow.kinds.text_classification.model import predict_texts

    texts = [text for text, _ in synthetic_rows(30, seed=11)] + [LONG]
    want = predict_texts(clf_dir, texts, max_length=MAX_LENGTH)  # hubflow's batch path (Classifier.probs)
    client = InferenceClient(base_url=servers.proxy, token=TOKEN)
    with ThreadPoolExecutor(8) as pool:  # concurrent callers: the server batches them
        got = list(pool.map(client.text_classification, texts))
        top2 = list(pool.map(lambda t: client.text_classification(t, top_k=2), texts))
    for text, answer, ranked, expected in zip(texts, got, top2, want):
        assert [e.label for e in answer][0] == expected["label"], text
        assert sorted(e.label for e in answer) == sorted(LABELS)
        scores = {e.label: e.score for e in answer}
        assert all(abs(scores[n] - p) <= 1e-5 for n, p in zip(LABELS, expected["probs"])), (scores, expected)
        assert [e.label for e in ranked] == [e.label for e in answer][:2]
    # Requests were batched: some model call took more than one row (on one replica or the other).
    rows = sum(servers.__dict__[k].metrics().get('batch_size_sum{queue="classify"}', 0) for k in "ab")
    calls = sum(servers.__dict__[k].metrics().get('batch_size_count{queue="classify"}', 0) for k in "ab")
    assert rows == 2 * len(texts) and calls < rows


def test_two_processes_behind_one_address_both_answer(servers):
    before = {k: servers.__dict__[k].metrics().get('requests_total{route="/predict",status="200"}', 0) for k in "ab"}
    for i in range(6):  # a fresh connection each: the proxy alternates
        r = httpx.post(servers.proxy + "/predict", json={"inputs": f"storm {i}"}, headers=bearer(), timeout=30)
        assert r.status_code == 200 and r.json()[0][0]["label"] in LABELS
    after = {k: servers.__dict__[k].metrics()['requests_total{route="/predict",status="200"}'] for k in "ab"}
    assert after["a"] - before["a"] == 3 and after["b"] - before["b"] == 3
    infos = [httpx.get(servers.__dict__[k].url + "/info", headers=bearer(), timeout=10).json() for k in "ab"]
    assert infos[0]["pid"] != infos[1]["pid"] and infos[0]["batching"] == infos[1]["batching"]


def test_a_token_is_required_and_compared_whole(servers):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    url = servers.a.url
    for headers in ({}, bearer("wrong"), bearer(TOKEN[:-1]), {"Authorization": TOKEN}):
        r = httpx.post(url, json={"inputs": "goal"}, headers=headers, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert "bearer token" in r.json()["error"]
    with pytest.raises(HfHubHTTPError) as err:
        InferenceClient(base_url=url, token="wrong").text_classification("goal")
    assert err.value.response.status_code == 401
    assert httpx.get(url + "/info", timeout=10).status_code == 401
    for open_route in ("/health", "/metrics"):  # probes and scrapers need no token
        assert httpx.get(url + open_route, timeout=10).status_code == 200


def test_bad_input_is_a_4xx_with_one_sentence_never_a_5xx(servers):
    url, h = servers.a.url, {**bearer(), "Content-Type": "application/json"}
    cases = {
        b"{not json": 400, b"[1, 2]": 400, b"": 400, b'"text"': 400, b"\xff\xfe": 400,
        b'{"inputs": 3}': 400, b'{"inputs": ["ok", 5]}': 400, b'{"inputs": []}': 400, b'{"inputs": ""}': 400,
        b'{"inputs": "   "}': 400, b'{"text": "no inputs key"}': 400,
        b'{"inputs": "ok", "parameters": {"top_k": 0}}': 400, b'{"inputs": "ok", "parameters": {"top_k": "2"}}': 400,
        b'{"inputs": "ok", "parameters": {"function_to_apply": "relu"}}': 400,
        b'{"inputs": "ok", "parameters": []}': 400,
        b'{"inputs": ["x"] ' + b', "pad": "' + b"y" * (10 << 20) + b'"}': 413,  # a 10 MB body
    }
    for body, status in cases.items():
        r = httpx.post(url + "/predict", content=body, headers=h, timeout=30)
        assert r.status_code == status, (body[:60], r.status_code, r.text[:200])
        message = r.json()["error"]
        assert "\n" not in message and "Traceback" not in message and len(message) < 200, message
    chunks = (b"x" * (1 << 20) for _ in range(10))  # 10 MB, chunked: no Content-Length to refuse it by
    r = httpx.post(url + "/predict", content=chunks, headers=h, timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert httpx.get(url + "/nope", headers=bearer(), timeout=10).status_code == 404
    assert httpx.get(url + "/predict", headers=bearer(), timeout=10).status_code == 405
    # (/health answered 503 while the model loaded: that is its job)
    assert not [k for k in servers.a.metrics() if k.startswith("requests_total") and 'status="5' in k
                and "/health" not in k]


def test_health_info_and_metrics_say_what_runs(servers, clf_dir):
    url = servers.a.url
    assert httpx.get(url + "/health", timeout=10).json() == {"status": "ready"}
    info = httpx.get(url + "/info", headers=bearer(), timeout=10).json()
    assert info["model_id"] == str(clf_dir) and info["task"] == "text-classification"
    assert info["labels"] == LABELS and info["max_input_length"] == MAX_LENGTH
    assert info["batching"]["max_wait_ms"] == 20 and info["batching"]["max_queue"] == 256
    assert info["batching"]["max_forward_tokens"] == 64 and info["batching"]["parallel_passes"] == 2
    assert info["threads"] == 1
    assert info["precision"] == "auto" and info["device"] == "cpu" and info["server_version"]
    metrics = httpx.get(url + "/metrics", timeout=10).text
    for name in ('requests_total{route="/",status="200"}', 'requests_total{route="/",status="401"}',
                 'queue_depth{queue="classify"}', 'batch_size_bucket{le="1.0",queue="classify"}',
                 'request_seconds_bucket{le="0.5",route="/"}', "time_to_first_token_seconds_count",
                 "generated_tokens_total", "process_resident_memory_bytes"):
        assert name in metrics, name


def test_hubflow_serve_folder_in_int8_refuses_long_inputs_when_told(servers, clf_dir):
    from hubflow.kinds.text_classification.model import predict_texts

    s = servers.s
    info = httpx.get(s.url + "/info", headers=bearer(), timeout=10).json()
    assert info["limits"]["on_too_long"] == "refuse" and info["task"] == "text-classification"
    assert info["precision"] == "int8"
    r = httpx.post(s.url + "/predict", json={"inputs": LONG}, headers=bearer(), timeout=30)
    assert r.status_code == 422 and f"limit of {MAX_LENGTH}" in r.json()["error"], r.text
    texts = ["goal match", "the bank said the stock price fell"]
    r = httpx.post(s.url + "/predict", json={"inputs": texts}, headers=bearer(), timeout=30)
    want = predict_texts(clf_dir, texts, max_length=MAX_LENGTH, precision="int8")  # int8 batch inference
    for answer, expected in zip(r.json(), want):
        scores = {e["label"]: e["score"] for e in answer}
        assert answer[0]["label"] == expected["label"]
        assert all(abs(scores[n] - p) <= 1e-5 for n, p in zip(LABELS, expected["probs"])), (scores, expected)


def queued(proc: ServerProcess, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while proc.metrics().get('queue_depth{queue="classify"}') != n:
        assert time.monotonic() < deadline, f"the queue never held {n}"
        time.sleep(0.05)


def test_a_full_queue_answers_429_with_retry_after(servers):
    s = servers.s
    post = lambda text: httpx.post(s.url + "/", json={"inputs": text}, headers=bearer(), timeout=60)  # noqa: E731
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(post, t) for t in ("goal", "rain")]  # each waits 1.5 s for company
        queued(s, 2)
        started = time.monotonic()
        r = post("stock")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
        assert time.monotonic() - started < 1.0  # answered at once, never a hang
        assert [w.result().status_code for w in waiting] == [200, 200]


def test_sigterm_drains_the_request_in_flight_then_exits(servers):
    s = servers.s
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, s.url + "/", json={"inputs": "thunder forecast"}, headers=bearer(),
                              timeout=60)
        queued(s, 1)
        s.proc.send_signal(signal.SIGTERM)
        r = waiting.result()
    assert r.status_code == 200 and r.json()[0][0]["label"] in LABELS
    assert s.proc.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health", timeout=5)


def test_a_server_that_cannot_serve_says_why_in_one_line_and_exits(clf_dir, tmp_path):
    import subprocess
    import sys

    from tests.serve_procs import SERVER

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SERVE_")}
    no_token = subprocess.run([sys.executable, str(SERVER), "--model", str(clf_dir)], capture_output=True, text=True,
                              timeout=60, env=env)
    assert no_token.returncode != 0 and no_token.stderr.strip().splitlines() == [
        "server: no token to check callers against: give --token-file (or SERVE_TOKEN), or --public"]
    bad = ServerProcess.script(tmp_path / "no-such-model", HANDLER, "--public")
    assert bad.proc.wait(120) == 1
    assert "cannot serve" in bad.output() and "Traceback" not in bad.output()
    bad.stop()


def test_the_server_and_the_handlers_are_self_contained():
    """server.py is an endpoint Space's app.py and serve.py its handler.py: byte copies that run without hubflow."""
    import ast
    import sys

    from hubflow.kinds import all_kinds
    from tests.serve_procs import SERVER

    allowed = set(sys.stdlib_module_names) | {"fastapi", "starlette", "uvicorn", "prometheus_client", "torch",
                                              "transformers", "huggingface_hub", "numpy", "safetensors", "peft",
                                              "fsspec"}  # huggingface_hub's own dependency: --sample-to s3://...
    files = [SERVER] + [k.serve_handler for k in all_kinds() if k.serve_handler and k.serve_handler.exists()]
    assert HANDLER in files
    for path in files:
        tree = ast.parse(path.read_text())
        roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), path  # no relative import
        assert roots <= allowed, (path, roots - allowed)
        if path != SERVER:
            assert "def create_handler(" in path.read_text(), path
