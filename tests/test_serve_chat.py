"""The causal-LM handler (hubflow/kinds/causal_lm/serve.py) behind a real server.py process on loopback.

The unmodified clients (huggingface_hub's InferenceClient, the openai package) talk to it; greedy answers equal
hubflow's batch generation (model.Generator) for the same prompts; 8 concurrent chats answer what 8 chats one at a
time do (continuous batching: rows join and leave a running batch); a streaming client that goes away stops its
generation; bad input is a 4xx with one sentence.

The model is a tiny random Llama with a chat template and hubflow.json facts (chat, max_length 96); its EOS row of the
head is scaled so that some greedy answers end with EOS after a few tokens and others run to max_tokens.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.tiny import TINY_CHAT_TEMPLATE, make_tiny_llama, synthetic_rows

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "hubflow" / "serving" / "server.py"
HANDLER = ROOT / "hubflow" / "kinds" / "causal_lm" / "serve.py"
MESSAGES = [f"topic of: {text}" for text, _ in synthetic_rows(8, seed=3)]
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # hubflow's own generation here: tiny ops, shared cores
LENGTHS = [40, 12, 40, 25, 7, 40, 33, 18]  # max_tokens per chat: rows leave the batch at different steps


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from safetensors.torch import load_file, save_file

    folder = make_tiny_llama(tmp_path_factory.mktemp("chat") / "model", chat_template=TINY_CHAT_TEMPLATE, hidden=64)
    weights = load_file(folder / "model.safetensors")
    eos = json.loads((folder / "config.json").read_text())["eos_token_id"]
    weights["lm_head.weight"][eos] *= 1.35  # some answers end with EOS early, the others at max_tokens
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 4096  # room for a long generation (RoPE has no learned positions)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "hubflow.json").write_text(json.dumps({"task": "causal-lm", "max_length": 96, "shape": "chat",
                                                     "chat": True}))
    return folder


def launch(model_dir: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """server.py with the causal-LM handler on a free port -> (process, base URL); the model is still loading."""
    proc = subprocess.Popen([sys.executable, str(SERVER), "--model", str(model_dir), "--handler", str(HANDLER),
                             "--public", "--port", "0", "--max-batch-size", "16", *extra],
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=log.parent,
                            env={**os.environ, "OMP_NUM_THREADS": "1",  # tiny ops: one thread, no fighting
                                 "SERVE_MAX_NEW_TOKENS": "2000"})
    line = proc.stdout.readline()
    match = re.search(r"serving (http://\S+)", line)
    assert match, f"server did not start: {line!r} {log.read_text()[-2000:]}"
    return proc, match.group(1)


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return url
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)
    raise AssertionError(f"server not ready in 90 s: {log.read_text()[-2000:]}")


def stop_server(proc) -> None:
    proc.terminate()  # by pid: SIGTERM drains and exits
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def launched(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc, url = launch(model_dir, log)
    yield proc, url, log
    stop_server(proc)


@pytest.fixture(scope="module")
def server(launched, batch_answers):
    """The base URL and log of the server once ready (batch generation's answers are computed while it loads)."""
    proc, url, log = launched
    return wait_ready(proc, url, log), log


@pytest.fixture(scope="module")
def batch_answers(model_dir, launched) -> list[tuple[str, int, str]]:
    """hubflow's batch generation of the 8 chats (greedy, 8 per batch, each with its own max_tokens)."""
    import torch

    from hubflow.kinds.causal_lm.model import Generator
    from hubflow.kinds.causal_lm.settings import Generation

    gen = Generator.load(model_dir, torch.device("cpu"), torch.float32)
    tok = gen.tokenizer
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for m in MESSAGES]
    # one batch per limit: hubflow's generation takes one max_new_tokens per call
    return [gen.generate([p], Generation(max_new_tokens=n), 8, 1 << 30)[0] for p, n in zip(ids, LENGTHS)]


def chat(url: str, i: int, **kw) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": MESSAGES[i]}], "max_tokens": LENGTHS[i], **kw}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples named `name` (or exactly `name{labels}`) on /metrics."""
    text = httpx.get(url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{" if "{" not in name else name + " "))


def test_inference_client_chat_equals_batch_generation(server, batch_answers):
    from huggingface_hub import InferenceClient

    url, _ = server
    client = InferenceClient(base_url=url)
    assert {f for _, _, f in batch_answers} == {"eos", "length"}  # both stop rules are exercised
    for i in range(3):
        want, new_tokens, finish = batch_answers[i]
        out = client.chat_completion([{"role": "user", "content": MESSAGES[i]}], max_tokens=LENGTHS[i])
        assert out.choices[0].message.content == want
        assert out.choices[0].finish_reason == ("stop" if finish == "eos" else "length")
        assert out.usage.completion_tokens == new_tokens
        assert out.usage.total_tokens == out.usage.prompt_tokens + new_tokens
        chunks = list(client.chat_completion([{"role": "user", "content": MESSAGES[i]}], max_tokens=LENGTHS[i],
                                             stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
        assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_the_openai_client_works_unmodified(server, batch_answers):
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    models = client.models.list().data
    assert len(models) == 1 and models[0].id == httpx.get(url + "/info").json()["model_id"]
    out = client.chat.completions.create(model="any", messages=[{"role": "user", "content": MESSAGES[3]}],
                                         max_tokens=LENGTHS[3], temperature=0)
    assert out.choices[0].message.content == batch_answers[3][0]
    stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": MESSAGES[3]}],
                                            max_tokens=LENGTHS[3], stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == batch_answers[3][0]
    assert chunks[-1].usage.completion_tokens == batch_answers[3][1]
    done = client.completions.create(model="any", prompt="the stock market", max_tokens=6)
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.prompt_tokens > 0
    pieces = list(client.completions.create(model="any", prompt="the stock market", max_tokens=6, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == done.choices[0].text


def test_eight_concurrent_chats_answer_as_eight_one_at_a_time(server, batch_answers):
    url, _ = server
    alone = [chat(url, i)["choices"][0]["message"]["content"] for i in range(8)]
    assert alone == [a for a, _, _ in batch_answers]
    batches_before = metric(url, "batch_size_sum")
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: chat(url, i)["choices"][0]["message"]["content"], range(8)))
    assert together == alone
    assert metric(url, "batch_size_sum") - batches_before > sum(LENGTHS) / 4  # rows shared decode steps


def test_a_chat_joins_a_running_generation_and_leaves_it_without_changing_either(server, model_dir):
    """A long streamed answer is running when a short chat arrives: the short one is prefilled, its cache joined to
    the running batch (and cut out again when it ends first); both answers are what each gets alone."""
    import torch

    from hubflow.kinds.causal_lm.model import Generator
    from hubflow.kinds.causal_lm.settings import Generation

    url, _ = server
    long_i = 6  # its greedy answer runs past 300 tokens without an EOS (1 and 4 are short ones at their LENGTHS)
    gen = Generator.load(model_dir, torch.device("cpu"), torch.float32)
    tok = gen.tokenizer
    prompt = tok(tok.apply_chat_template([{"role": "user", "content": MESSAGES[long_i]}], tokenize=False,
                                         add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    want, _, _ = gen.generate([prompt], Generation(max_new_tokens=300), 1, 1 << 30)[0]
    shared = metric(url, "batch_size_count") - metric(url, 'batch_size_bucket{le="1.0",queue="generate"}')
    body = {"messages": [{"role": "user", "content": MESSAGES[long_i]}], "max_tokens": 300, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        pieces = [next(lines) for _ in range(4)]  # the long answer is under way
        short = [chat(url, i)["choices"][0]["message"]["content"] for i in (1, 4)]
        pieces += list(lines)
    events = [json.loads(p[6:]) for p in pieces if p.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == want
    assert short == [chat(url, i)["choices"][0]["message"]["content"] for i in (1, 4)]
    assert metric(url, "batch_size_count") - metric(url, 'batch_size_bucket{le="1.0",queue="generate"}') > shared


def test_sampling_follows_its_seed_and_stop_strings_cut_the_answer(server, batch_answers):
    url, _ = server
    one, two = (chat(url, 0, temperature=0.9, top_p=0.9, seed=7) for _ in range(2))
    assert one["choices"][0]["message"]["content"] == two["choices"][0]["message"]["content"]
    i = max(range(8), key=lambda k: len(batch_answers[k][0]))  # the longest answer: the stop string is in the middle
    greedy = batch_answers[i][0]
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 3]
    cut = chat(url, i, stop=[stop])["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["message"]["content"] == greedy[:greedy.find(stop)]


def test_a_streaming_client_that_goes_away_stops_its_generation(server):
    url, log = server
    body = {"messages": [{"role": "user", "content": MESSAGES[0]}], "max_tokens": 3500, "stream": True,
            "temperature": 1.0, "seed": 1}  # sampled: EOS may come, but not soon enough to beat the disconnect
    assert httpx.get(url + "/info").json()["max_new_tokens"] == 2000  # SERVE_MAX_NEW_TOKENS caps the 3500 asked
    before = metric(url, "generated_tokens_total")
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 5:
                break  # leaving the block closes the connection
    time.sleep(1.0)
    settled = metric(url, "generated_tokens_total")
    time.sleep(1.0)
    assert metric(url, "generated_tokens_total") == settled  # nothing is generated for nobody
    assert settled - before < 1500
    assert "generation stopped: the client went away" in log.read_text()


def test_a_waiting_client_that_gives_up_stops_its_generation(server):
    """Not streamed: the handler notices the closed connection while it waits (it polls) and drops the row."""
    url, log = server
    stopped = log.read_text().count("generation stopped")
    body = {"messages": [{"role": "user", "content": MESSAGES[6]}], "max_tokens": 2000}  # greedy: no EOS for long
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    deadline = time.monotonic() + 10
    while log.read_text().count("generation stopped") == stopped and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().count("generation stopped") == stopped + 1


@pytest.mark.parametrize("body, needle", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": 42}]}, "content"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, "stop"),
    ({"messages": "hi"}, "messages"),
])
def test_bad_input_is_a_4xx_with_one_sentence(server, body, needle):
    url, _ = server
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and needle in r.json()["error"] and "\n" not in r.json()["error"]


LONG = {"messages": [{"role": "user", "content": " ".join(["stock market price"] * 60)}], "max_tokens": 4}


def test_a_prompt_over_the_limit_is_truncated_by_default(server):
    url, _ = server  # LONG is well over max_length 96 tokens
    truncated = httpx.post(url + "/v1/chat/completions", json=LONG, timeout=60).json()
    assert truncated["usage"]["prompt_tokens"] == 95  # the last 95 tokens: room for one answer token at least


@pytest.mark.slow  # a second server process (~30 s on a busy 2-core machine); the default suite tests truncation
def test_a_prompt_over_the_limit_is_refused_under_on_too_long_refuse(model_dir, tmp_path):
    body = LONG
    proc, refusing = launch(model_dir, tmp_path / "refuse.log", "--on-too-long", "refuse")
    try:
        wait_ready(proc, refusing, tmp_path / "refuse.log")
        r = httpx.post(refusing + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 422 and "limit of 95" in r.json()["error"]
    finally:
        stop_server(proc)


def test_an_adapter_folder_is_served_merged_on_its_base(model_dir, tmp_path):
    """publish.format=adapter publishes the adapter alone: the handler loads its base (a Hub repo at the pinned sha;
    here a local folder) and merges it, giving the logits of the base with the adapter on."""
    from types import SimpleNamespace

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hubflow.kinds.causal_lm import serve

    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(model_dir)}))
    for name in ("tokenizer.json", "tokenizer_config.json", "hubflow.json"):
        (adapter / name).write_bytes((model_dir / name).read_bytes())
    kit = SimpleNamespace(facts=json.loads((model_dir / "hubflow.json").read_text()), dtype=torch.float32,
                          device=torch.device("cpu"), settings=SimpleNamespace(hub_token_file=None))
    model, tokenizer = serve.load_model(str(adapter), kit)
    ids = torch.tensor([tokenizer("the stock market")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, peft(ids).logits, atol=1e-5)
