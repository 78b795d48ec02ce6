"""The classifier server under load: 2,000 requests from 64 concurrent clients, 5% of them malformed, against a real
server.py process (hubflow/serving/server.py + the classifier handler) on loopback.

What a user of the endpoint would notice: every valid request gets the answer that text gets when sent alone (the
batch it shared changes nothing but float rounding), every malformed one a 4xx with a one-sentence JSON error, no
5xx, no traceback in the server's log, and the server's memory does not grow once warm.

Run: `.venv/bin/pytest -q tests/test_serve_load.py` (~30 s on 2 busy cores: a tiny 2-layer BERT).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.tiny import KEYWORDS, LABELS, make_tiny_bert, synthetic_rows

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "hubflow" / "serving" / "server.py"
HANDLER = ROOT / "hubflow" / "kinds" / "text_classification" / "serve.py"
REQUESTS, CLIENTS, MALFORMED_SHARE = 2000, 64, 0.05
WARM_UP = 400  # requests before the memory baseline is read (allocator pools, tokenizer caches, batch shapes)
MAX_BODY = 64 * 1024  # --max-body-bytes: the oversized bodies below are 2x and 160x this
RSS_MARGIN_MB = 25  # growth allowed after warm-up: allocator noise, not a leak (a leak of 1 KB/request is 1.6 MB...)
RSS_MARGIN_SHARE = 0.05  # ... so the margin is generous: 25 MB or 5% of the warm RSS, whichever is larger


def malformed_bodies(rng: random.Random) -> list[tuple[bytes, str]]:
    """(raw body, what is wrong with it): every kind of bad input a careless client sends."""
    big = json.dumps({"inputs": "word " * (MAX_BODY // 2)}).encode()  # ~2.5x the limit
    huge = json.dumps({"inputs": ["x" * 1000] * 10_000}).encode()  # ~10 MB
    return [
        (b"{not json", "bad JSON"), (b'{"inputs": "unterminated', "truncated JSON"), (b"", "empty body"),
        (b"[]", "a JSON list, not an object"), (b'"just a string"', "a JSON string"),
        (b"{}", "no inputs"), (json.dumps({"inputs": ""}).encode(), "empty text"),
        (json.dumps({"inputs": []}).encode(), "empty list"), (json.dumps({"inputs": 5}).encode(), "a number"),
        (json.dumps({"inputs": [1, 2]}).encode(), "numbers in a list"),
        (json.dumps({"inputs": {"text": "a"}}).encode(), "an object"),
        (json.dumps({"inputs": "the team", "parameters": {"top_k": "two"}}).encode(), "top_k a string"),
        (json.dumps({"inputs": "the team", "parameters": {"top_k": -1}}).encode(), "top_k negative"),
        (json.dumps({"inputs": "the team", "parameters": "fast"}).encode(), "parameters a string"),
        (json.dumps({"inputs": "the team", "parameters": {"function_to_apply": "tanh"}}).encode(), "bad function"),
        (b"\xff\xfe\x00garbage", "not UTF-8"), (big, "oversized body"), (huge, "10 MB body"),
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier with named labels and hubflow.json facts, as training writes them."""
    folder = make_tiny_bert(tmp_path_factory.mktemp("load") / "bert", num_labels=len(LABELS))
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(LABELS)}
    config["label2id"] = {name: i for i, name in enumerate(LABELS)}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "hubflow.json").write_text(json.dumps({"task": "text-classification", "max_length": 64,
                                                     "label_names": LABELS}))
    return folder


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """(base URL, pid, log path) of server.py on a socket bound here (no port race); stopped by pid."""
    log = tmp_path_factory.mktemp("load-log") / "server.log"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(SERVER), "--model", str(model_dir), "--handler", str(HANDLER),
                                 "--public", "--fd", str(sock.fileno()), "--max-body-bytes", str(MAX_BODY)],
                                pass_fds=[sock.fileno()], stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"server exited: {log.read_text()[-2000:]}"
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready in 120 s: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield url, proc.pid, log
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        sock.close()


def rss_mb(pid: int) -> float:
    """The process's resident memory (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def plan(n: int, seed: int = 0) -> list[tuple[bytes, str | None, str]]:
    """n requests in a shuffled order: (body, the text when valid else None, what it is)."""
    rng = random.Random(seed)
    texts = [t for t, _ in synthetic_rows(60, seed=seed)]
    texts += [" ".join(rng.choice(KEYWORDS["sports"]) for _ in range(200)),  # over max_length: truncated
              "ünïcödé — the storm 🌧 over the city", "   leading and trailing spaces   "]
    bad = malformed_bodies(rng)
    n_bad = round(n * MALFORMED_SHARE)
    out = [(bad[i % len(bad)][0], None, bad[i % len(bad)][1]) for i in range(n_bad)]
    for i in range(n - n_bad):
        text = texts[i % len(texts)]
        out.append((json.dumps({"inputs": text}).encode(), text, "valid"))
    rng.shuffle(out)
    return out


async def send_all(url: str, requests: list[tuple[bytes, str | None, str]], clients: int):
    """Each request once, `clients` connections at a time -> [(status, parsed JSON or raw text)] in order."""
    results: list = [None] * len(requests)
    todo = iter(range(len(requests)))

    async def client():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as http:
            for i in todo:
                r = await http.post(url + "/", content=requests[i][0], headers={"Content-Type": "application/json"})
                try:
                    results[i] = (r.status_code, r.json())
                except ValueError:
                    results[i] = (r.status_code, r.text)

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


def same_answer(got, want) -> bool:
    """The same labels with the same scores (to float rounding: batched rows are padded with others)."""
    if not (isinstance(got, list) and len(got) == 1 and len(got[0]) == len(want[0])):
        return False
    g = {d["label"]: d["score"] for d in got[0]}
    return g.keys() == {d["label"] for d in want[0]} and all(abs(g[d["label"]] - d["score"]) < 1e-5 for d in want[0])


def test_2000_requests_at_64_clients_with_malformed_ones(server):
    url, pid, log = server
    requests = plan(REQUESTS)
    alone = {}  # each distinct valid text, sent alone: the reference answer
    for body, text, _ in requests:
        if text is not None and text not in alone:
            r = httpx.post(url + "/", content=body, headers={"Content-Type": "application/json"}, timeout=30)
            assert r.status_code == 200, r.text
            alone[text] = r.json()

    started = time.monotonic()
    warm = asyncio.run(send_all(url, requests[:WARM_UP], CLIENTS))
    rss_warm = rss_mb(pid)
    rest = asyncio.run(send_all(url, requests[WARM_UP:], CLIENTS))
    rss_end = rss_mb(pid)
    seconds = time.monotonic() - started

    wrong, server_errors, not_refused = [], [], []
    for (body, text, what), (status, answer) in zip(requests, warm + rest):
        if status >= 500:
            server_errors.append((what, status, answer))
        elif text is not None and (status != 200 or not same_answer(answer, alone[text])):
            wrong.append((text[:40], status, answer))
        elif text is None and not (400 <= status < 500 and isinstance(answer, dict) and answer.get("error")):
            not_refused.append((what, status, str(answer)[:200]))
    assert not server_errors, f"{len(server_errors)} answered 5xx, e.g. {server_errors[:3]}"
    assert not wrong, f"{len(wrong)} valid requests answered wrongly, e.g. {wrong[:3]}"
    assert not not_refused, f"{len(not_refused)} malformed requests not a 4xx with an error, e.g. {not_refused[:3]}"
    errors = [a["error"] for (_, t, _), (_, a) in zip(requests, warm + rest) if t is None]
    assert all("\n" not in e and len(e) < 300 for e in errors), "an error is one short sentence"
    assert "Traceback" not in log.read_text()
    margin = max(RSS_MARGIN_MB, RSS_MARGIN_SHARE * rss_warm)
    assert rss_end - rss_warm <= margin, (f"server RSS grew {rss_end - rss_warm:.1f} MB after warm-up "
                                          f"({rss_warm:.0f} -> {rss_end:.0f} MB; margin {margin:.0f} MB)")
    print(f"\n{REQUESTS} requests at {CLIENTS} clients in {seconds:.1f} s ({REQUESTS / seconds:.0f}/s); "
          f"RSS {rss_warm:.0f} -> {rss_end:.0f} MB")
