"""The causal-LM task kind on tiny things: data shapes, loss masks and EOS, packing without leaks, bad input,
full and LoRA training, resume, batch generation with its finish reasons, and the memory preflight.

Everything is built on the fly: a 2-layer Llama with a byte-level BPE tokenizer trained on a word list
(tests/tiny.py), and chat rows whose answer is the topic of the user's words in a fixed reply format.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from hubflow.config import DataConfig
from hubflow.errors import PreflightError
from hubflow.kinds import kind_for
from hubflow.kinds.causal_lm.settings import CausalLMInference, CausalLMPreprocess, CausalLMTrain, Generation
from hubflow.refs import PinnedRepo
from hubflow.stages import pull
from hubflow.stages.evaluate import evaluate_predictions
from hubflow.stages.facts import weights_fingerprint
from hubflow.stages.predict import predict, read_predictions
from hubflow.stages.train import train_model
from hubflow.tokenize import load_tokenized
from tests.tiny import TINY_CHAT_TEMPLATE, chat_rows, make_tiny_llama

KIND = kind_for("causal-lm")
BASE = PinnedRepo(repo_id="tiny/llama", repo_type="model", revision="main", sha="1" * 40)
DATA = DataConfig(source="tiny")
GEN = CausalLMInference(batch_size=16, shard_size=16, generation={"max_new_tokens": 12})
FULL = CausalLMTrain(method="full", epochs=6, batch_size=16, learning_rate=1e-2, warmup_ratio=0.05,
              checkpoint_every_steps=20, seed=0)
LORA = CausalLMTrain(method="lora", epochs=2, batch_size=16, learning_rate=3e-2, checkpoint_every_steps=7, seed=0,
              lora={"r": 4, "alpha": 8})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the same thread setting as the classifier tests


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("llama"), chat_template=TINY_CHAT_TEMPLATE, hidden=64)


@pytest.fixture(scope="module")
def chat(llama, tmp_path_factory):
    """(raw, tokenized) of 300 train / 40 test chat rows (validation carved from train)."""
    root = tmp_path_factory.mktemp("chat")
    dsd = DatasetDict(train=Dataset.from_list(chat_rows(300, 0)), test=Dataset.from_list(chat_rows(40, 1)))
    raw = pull.write_raw_splits(dsd, DATA, KIND, str(root / "raw"), "tiny", None)
    return raw, KIND.prepare(raw, str(llama), CausalLMPreprocess(max_length=96), DATA, str(root / "tok"))


@pytest.fixture(scope="module")
def full_run(llama, chat, tmp_path_factory):
    """The untrained model's predictions, then a full fine-tune's checkpoint and predictions."""
    _, tokenized = chat
    root = tmp_path_factory.mktemp("full")
    before = predict(str(llama), weights_fingerprint(llama), tokenized, "test", GEN, str(root / "before"))
    ck = train_model(tokenized, str(llama), BASE, FULL, str(root / "train"))
    after = predict(ck.uri, ck.fingerprint, tokenized, "test", GEN, str(root / "after"))
    return ck, before, after, root


@pytest.fixture(scope="module")
def lora_run(llama, chat, tmp_path_factory):
    _, tokenized = chat
    out = str(tmp_path_factory.mktemp("lora") / "train")
    return train_model(tokenized, str(llama), BASE, LORA, out), out


# ---- data -----------------------------------------------------------------------------------------------------------

def test_chat_rows_train_on_the_answer_and_the_eos_that_ends_it(chat, llama):
    from transformers import AutoTokenizer

    raw, tokenized = chat
    assert raw.columns == {"messages": "messages"} and tokenized.facts.shape == "chat" and tokenized.facts.chat
    tok = AutoTokenizer.from_pretrained(llama)
    test = load_tokenized(tokenized)["test"]
    row = test[0]
    answered = [t for t, y in zip(row["input_ids"], row["labels"]) if y != -100]
    assert tok.decode(answered) == row["reference"] + tok.eos_token  # the answer, then EOS: the model learns to stop
    assert tok.decode(row["input_ids"][: len(row["prompt_ids"])]) == row["prompt"]  # the prompt carries no loss
    assert row["prompt"].endswith("<|assistant|>") and row["message"].startswith("topic of:")


def test_prompt_completion_without_a_template_is_prompt_then_completion(tmp_path):
    from transformers import AutoTokenizer

    plain = make_tiny_llama(tmp_path / "plain")  # no chat template
    rows = [{"prompt": r["messages"][0]["content"], "completion": " " + r["messages"][1]["content"]}
            for r in chat_rows(40, 2)]
    raw = pull.write_raw_splits(DatasetDict(train=Dataset.from_list(rows)), DATA, KIND, str(tmp_path / "raw"),
                                "x", None)
    assert raw.columns == {"prompt": "prompt", "completion": "completion"}
    ref = KIND.prepare(raw, str(plain), CausalLMPreprocess(max_length=64), DATA, str(tmp_path / "tok"))
    assert not ref.facts.chat and ref.facts.shape == "prompt-completion"
    tok = AutoTokenizer.from_pretrained(plain)
    row = load_tokenized(ref)["test"][0]
    assert tok.decode(row["input_ids"]) == tok.bos_token + row["message"] + row["reference"] + tok.eos_token


def test_raw_text_is_packed_into_blocks_of_max_length(tmp_path, llama):
    texts = [" ".join(r["messages"][0]["content"].split()[2:]) for r in chat_rows(60, 3)]
    raw = pull.write_raw_splits(DatasetDict(train=Dataset.from_dict({"text": texts})), DATA, KIND,
                                str(tmp_path / "raw"), "x", None)
    ref = KIND.prepare(raw, str(llama), CausalLMPreprocess(max_length=32), DATA, str(tmp_path / "tok"))
    splits = load_tokenized(ref)
    assert ref.facts.shape == "text" and not ref.facts.chat
    for split in ("train", "validation", "test"):
        lengths = [len(x) for x in splits[split]["input_ids"]]
        assert all(n == 32 for n in lengths[:-1]) and 0 < lengths[-1] <= 32
        assert splits[split]["labels"] == splits[split]["input_ids"]  # continued pre-training: every token


def test_packed_chat_rows_never_attend_across_examples(llama, tmp_path):
    """Packing with position ids (no attention mask, no cache) gives each example exactly the logits it gets alone."""
    from transformers import AutoModelForCausalLM

    from tests.tiny import KEYWORDS

    short = [{"messages": [{"role": "user", "content": f"topic of: {w}"},
                           {"role": "assistant", "content": f"topic: {t}"}]}
             for t, words in KEYWORDS.items() for w in words]
    raw = pull.write_raw_splits(DatasetDict(train=Dataset.from_list(short)), DATA, KIND, str(tmp_path / "r"), "x", None)
    packed = KIND.prepare(raw, str(llama), CausalLMPreprocess(max_length=128, packing=True), DATA, str(tmp_path / "p"))
    single = KIND.prepare(raw, str(llama), CausalLMPreprocess(max_length=128), DATA, str(tmp_path / "s"))
    pack = load_tokenized(packed)["train"][0]
    examples = load_tokenized(single)["train"]
    starts = [i for i, p in enumerate(pack["position_ids"]) if p == 0]
    assert len(starts) >= 2, "the first pack holds several examples"
    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    with torch.no_grad():
        together = model(input_ids=torch.tensor([pack["input_ids"]]),
                         position_ids=torch.tensor([pack["position_ids"]]), use_cache=False).logits[0]
        for k, start in enumerate(starts):
            alone_ids = examples[k]["input_ids"]
            alone = model(input_ids=torch.tensor([alone_ids]), use_cache=False).logits[0]
            assert (together[start:start + len(alone_ids)] - alone).abs().max().item() < 1e-4


@pytest.mark.parametrize("case, message", [
    ("no template", "preprocess.chat_template"),
    ("long prompt", "preprocess.max_length=16: the prompt of row"),
    ("too many positions", "preprocess.max_length=4096 is more than the model's 128 positions"),
    ("no usable columns", "no 'messages' column (chat), no 'prompt' + 'completion' columns"),
    ("last turn not the answer", "training needs the assistant's answer last"),
])
def test_bad_lm_input_fails_before_training_naming_the_field(case, message, tmp_path, llama):
    rows = chat_rows(20, 4)
    model, cfg = llama, CausalLMPreprocess(max_length=96)
    if case == "no template":
        model = make_tiny_llama(tmp_path / "plain")
    elif case == "long prompt":
        cfg = CausalLMPreprocess(max_length=16)
    elif case == "too many positions":
        cfg = CausalLMPreprocess(max_length=4096)
    elif case == "no usable columns":
        rows = [{"conversation": r["messages"]} for r in rows]
    else:
        rows = [{"messages": r["messages"] + [{"role": "user", "content": "thanks"}]} for r in rows]
    with pytest.raises(ValueError, match=re.escape(message)):  # PreflightError is a ValueError
        raw = pull.write_raw_splits(DatasetDict(train=Dataset.from_list(rows)), DATA, KIND, str(tmp_path / "r"),
                                    "x", None)
        KIND.prepare(raw, str(model), cfg, DATA, str(tmp_path / "t"))


def test_settings_that_cannot_work_are_refused_at_validation():
    from pydantic import ValidationError

    from hubflow.config import PipelineConfig

    base = {"task": "causal-lm", "model": {"repo_id": "a/b"}, "data": {"source": "a/d"}}
    with pytest.raises(ValidationError, match="publish.format='adapter' needs train.method lora"):
        PipelineConfig.model_validate({**base, "publish": {"format": "adapter"}})
    with pytest.raises(ValidationError, match="train.method=qlora needs a CUDA GPU"):
        PipelineConfig.model_validate({**base, "train": {"method": "qlora"}})
    with pytest.raises(ValidationError, match="publish.gate.metric\n  Input should be 'perplexity'"):
        PipelineConfig.model_validate({**base, "publish": {"gate": {"metric": "macro_f1"}}})
    with pytest.raises(ValidationError, match="train.method\n  Extra inputs are not permitted"):  # a classifier's keys
        PipelineConfig.model_validate({**base, "task": "text-classification", "train": {"method": "lora"}})


# ---- training and generation ----------------------------------------------------------------------------------------

def test_fine_tuning_teaches_the_reply_format_and_lowers_perplexity(full_run):
    ck, before, after, root = full_run
    first = evaluate_predictions(before, ck.facts, str(root / "eval-before"))
    last = evaluate_predictions(after, ck.facts, str(root / "eval-after"), ck.history_uri)
    assert last.metrics["perplexity"] < first.metrics["perplexity"] / 10, (first.metrics, last.metrics)
    assert last.metrics["exact_match"] > first.metrics["exact_match"] + 0.5, (first.metrics, last.metrics)
    assert last.metrics["chrf"] > first.metrics["chrf"]
    rows = read_predictions(after).to_pylist()
    assert [r["row_id"] for r in rows] == list(range(40))
    assert {r["finish_reason"] for r in rows} == {"eos"}  # it learned to stop
    report = json.loads((root / "eval-after" / "report.json").read_text())
    assert report["finish_reasons"] == {"eos": 40} and (root / "eval-after" / "loss_curve.png").exists()


def test_the_trained_model_reloads_with_auto_classes_and_generates_what_batch_generation_did(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ck, _, after, _ = full_run
    folder = Path(ck.uri)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "hubflow.json"} <= {
        p.name for p in folder.iterdir()}
    assert json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template") or \
        (folder / "chat_template.jinja").exists()  # the chat template ships with the model
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    row = read_predictions(after).to_pylist()[0]
    ids = tok(row["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    assert tok.decode(out, skip_special_tokens=True) == row["completion"]


def test_generation_stops_at_stop_strings_or_the_token_limit(full_run, chat, tmp_path):
    ck, _, _, _ = full_run
    tokenized = chat[1]
    stopped = predict(ck.uri, ck.fingerprint, tokenized, "test", GEN.model_copy(update={"generation": Generation(
        max_new_tokens=12, stop=[":"])}), str(tmp_path / "stop"))
    short = predict(ck.uri, ck.fingerprint, tokenized, "test", GEN.model_copy(update={"generation": Generation(
        max_new_tokens=2)}), str(tmp_path / "short"))
    for r in read_predictions(stopped).to_pylist():
        assert r["finish_reason"] == "stop" and r["completion"] == "topic"
    assert {r["finish_reason"] for r in read_predictions(short).to_pylist()} == {"length"}
    assert all(r["new_tokens"] == 2 for r in read_predictions(short).to_pylist())


def test_sampling_is_reproducible_from_its_seed(full_run, chat, tmp_path):
    ck, _, after, _ = full_run
    sample = GEN.model_copy(update={"generation": Generation(max_new_tokens=12, decoding="sample",
                                                                   temperature=5.0, seed=7)})
    a = read_predictions(predict(ck.uri, ck.fingerprint, chat[1], "test", sample, str(tmp_path / "a")))
    b = read_predictions(predict(ck.uri, ck.fingerprint, chat[1], "test", sample, str(tmp_path / "b")))
    assert a.column("completion").to_pylist() == b.column("completion").to_pylist()
    greedy = read_predictions(after).column("completion").to_pylist()
    assert a.column("completion").to_pylist() != greedy  # temperature 5 does wander off


def test_a_lost_generation_shard_is_redone_alone(full_run, chat):
    """Like an interrupted run: the finished shards stay, the missing one is generated again, rows out = rows in."""
    from hubflow.stages.predict import read_manifest

    ck, _, after, _ = full_run
    manifest = read_manifest(after)
    lost = Path(after.uri) / manifest["shards"][1]["file"]
    kept = {s["file"]: (Path(after.uri) / s["file"]).stat().st_mtime_ns for s in manifest["shards"]}
    rows = read_predictions(after).to_pylist()
    lost.unlink()
    again = predict(ck.uri, ck.fingerprint, chat[1], "test", GEN, after.uri)
    assert again == after and read_predictions(again).to_pylist() == rows  # no lost or duplicated rows
    for s in manifest["shards"]:
        if s["file"] != lost.name:
            assert (Path(after.uri) / s["file"]).stat().st_mtime_ns == kept[s["file"]]


def test_lora_writes_a_merged_model_and_an_adapter_pinned_to_its_base(lora_run, llama, chat):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ck, _ = lora_run
    assert ck.adapter_uri and ck.adapter_fingerprint and ck.fingerprint != ck.adapter_fingerprint
    adapter = Path(ck.adapter_uri)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (BASE.repo_id, BASE.sha)
    facts = json.loads((adapter / "hubflow.json").read_text())
    assert facts["adapter_base"]["sha"] == BASE.sha and facts["task"] == "causal-lm"
    assert weights_fingerprint(adapter) == ck.adapter_fingerprint
    assert (adapter / "adapter_model.safetensors").stat().st_size < (Path(ck.uri) / "model.safetensors").stat().st_size
    merged = AutoModelForCausalLM.from_pretrained(ck.uri).eval()
    on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama), adapter).eval()
    ids = torch.tensor([load_tokenized(chat[1])["test"][0]["input_ids"]])
    with torch.no_grad():
        assert (merged(ids).logits - on_base(ids).logits).abs().max().item() < 1e-4


def test_a_killed_lora_run_resumes_where_an_unbroken_run_ends(lora_run, llama, chat, tmp_path):
    """LoRA checkpoints hold the trainable weights only; a rerun after a crash ends on the same adapter."""
    ck, out = lora_run
    _, tokenized = chat
    assert not (Path(out) / "resume").exists()  # a finished run keeps its model and history, not its checkpoints

    class Killed(Exception):
        pass

    def kill(fraction: float, message: str) -> None:
        if message == "checkpoint saved at step 14":
            raise Killed

    with pytest.raises(Killed):
        train_model(tokenized, str(llama), BASE, LORA, str(tmp_path / "t"), on_progress=kill)
    latest = tmp_path / "t" / "resume" / json.loads((tmp_path / "t" / "resume" / "latest.json").read_text())["dir"]
    assert (latest / "trainable.safetensors").exists() and not (latest / "model.safetensors").exists()
    again = train_model(tokenized, str(llama), BASE, LORA, str(tmp_path / "t"))
    history = json.loads(Path(again.history_uri).read_text())
    assert history["resumed_from"] == [14]
    assert again.adapter_fingerprint == ck.adapter_fingerprint and again.fingerprint == ck.fingerprint


def test_a_job_that_does_not_fit_the_device_is_refused_with_the_figures(llama, chat, tmp_path, monkeypatch):
    _, tokenized = chat
    monkeypatch.setenv("HUBFLOW_DEVICE_MEMORY", "1MB")
    with pytest.raises(PreflightError, match=r"needs about [\d.]+ MiB .* HUBFLOW_DEVICE_MEMORY has 1\.0 MiB; lower"):
        train_model(tokenized, str(llama), BASE, FULL, str(tmp_path / "t"))
    assert not (tmp_path / "t").exists()  # nothing was written


def test_the_memory_estimate_follows_the_method_and_checkpointing(llama):
    from hubflow.stages.memory import estimate, parameter_count

    params = parameter_count(str(llama))
    full = estimate(str(llama), FULL, 96, KIND)
    lora = estimate(str(llama), LORA.model_copy(update={"batch_size": 16}), 96, KIND)
    ckpt = estimate(str(llama), FULL.model_copy(update={"activation_checkpointing": True}), 96, KIND)
    assert full["weights"] == params * 4 and full["optimizer"] == params * 8
    assert lora["optimizer"] < full["optimizer"] and ckpt["activations"] < full["activations"]
    assert math.isclose(full["total"], 1.2 * sum(v for k, v in full.items() if k != "total"))
