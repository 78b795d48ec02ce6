"""On a CUDA device: bf16 training of a classifier, GPU batch inference that agrees with fp32 on the CPU, and LoRA
training plus batch generation of a causal LM: the same code paths as CPU, on tiny models (tests/tiny.py).

    pytest -m gpu tests/test_gpu.py        # skipped without a CUDA device; `make gpu-check` runs them first
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from hubflow.config import DataConfig, InferenceConfig, Precision, PreprocessConfig, TrainConfig
from hubflow.doors import store
from hubflow.kinds import kind_for
from hubflow.kinds.causal_lm.settings import CausalLMInference, CausalLMTrain
from hubflow.refs import PinnedRepo
from hubflow.stages import pull
from hubflow.stages.predict import predict, read_predictions
from hubflow.stages.train import train_model
from hubflow.tokenize import load_tokenized
from tests.tiny import TINY_CHAT_TEMPLATE, chat_rows, make_tiny_bert, make_tiny_llama, make_tiny_tokenized

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BERT = PinnedRepo(repo_id="tiny/bert", repo_type="model", revision="main", sha="0" * 40)
LLAMA = PinnedRepo(repo_id="tiny/llama", repo_type="model", revision="main", sha="1" * 40)
CLASSIFIER = TrainConfig(epochs=6, batch_size=8, learning_rate=5e-3, warmup_ratio=0.1, seed=0,
                         precision=Precision.bf16)
LORA = CausalLMTrain(method="lora", epochs=2, batch_size=16, learning_rate=3e-2, seed=0, lora={"r": 4, "alpha": 8},
                   precision=Precision.bf16)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-bert")
    model_dir = make_tiny_bert(root / "bert")
    tokenized = make_tiny_tokenized(root / "tokenized", model_dir)
    ref = train_model(tokenized, str(model_dir), BERT, CLASSIFIER, str(root / "train"))
    pred = predict(ref.uri, ref.fingerprint, tokenized, "test", InferenceConfig(batch_size=16), str(root / "pred"))
    return ref, tokenized, pred


def test_bf16_training_runs_on_the_gpu_and_learns(classifier):
    ref, _, _ = classifier
    assert ref.hardware == f"1x {torch.cuda.get_device_name()} (bf16)"
    losses = [s["loss"] for s in store.read_json(ref.history_uri)["steps"]]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert ref.metrics["eval_accuracy"] > 0.5, ref.metrics  # three classes: chance is 1/3 (as tests/test_train_infer)


def test_gpu_batch_predictions_agree_with_fp32_on_the_cpu(classifier):
    from transformers import AutoModelForSequenceClassification

    ref, tokenized, pred = classifier
    test = load_tokenized(tokenized)["test"]
    model = AutoModelForSequenceClassification.from_pretrained(ref.uri, dtype=torch.float32).eval()
    with torch.inference_mode():
        cpu = [model(input_ids=torch.tensor([ids])).logits.softmax(-1)[0].numpy() for ids in test["input_ids"]]
    rows = read_predictions(pred).to_pylist()
    assert [r["row_id"] for r in rows] == list(range(len(test)))
    gpu = np.array([r["probs"] for r in rows])
    agree = np.mean(gpu.argmax(1) == np.array(cpu).argmax(1))
    assert agree >= 0.95 and np.abs(gpu - np.array(cpu)).max() < 0.05, (agree, np.abs(gpu - np.array(cpu)).max())


def test_lora_trains_in_bf16_on_the_gpu_and_batch_generation_covers_every_row(tmp_path):
    kind, data = kind_for("causal-lm"), DataConfig(source="tiny")
    llama = make_tiny_llama(tmp_path / "llama", chat_template=TINY_CHAT_TEMPLATE, hidden=64)
    dsd = DatasetDict(train=Dataset.from_list(chat_rows(300, 0)), test=Dataset.from_list(chat_rows(40, 1)))
    raw = pull.write_raw_splits(dsd, data, kind, str(tmp_path / "raw"), "tiny", None)
    tokenized = kind.prepare(raw, str(llama), PreprocessConfig(max_length=96), data, str(tmp_path / "tok"))
    gen = CausalLMInference(batch_size=16, generation={"max_new_tokens": 12})

    ck = train_model(tokenized, str(llama), LLAMA, LORA, str(tmp_path / "train"))
    assert ck.hardware == f"1x {torch.cuda.get_device_name()} (bf16)"
    after = predict(ck.uri, ck.fingerprint, tokenized, "test", gen, str(tmp_path / "after"))
    rows = read_predictions(after).to_pylist()
    assert [r["row_id"] for r in rows] == list(range(40))
    assert all(1 <= r["new_tokens"] <= 12 and r["finish_reason"] in ("eos", "length") for r in rows)
    losses = [s["loss"] for s in store.read_json(ck.history_uri)["steps"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses  # the adapters learn (slowly, from random weights)
