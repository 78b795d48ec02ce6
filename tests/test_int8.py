"""int8 batch inference (`inference.precision: int8`) on a tiny trained classifier: it agrees with fp32, its shards
are its own, and it is refused where it does not apply (a causal LM, a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hubflow.config import InferenceConfig, InferencePrecision, PipelineConfig, TrainConfig
from hubflow.devices import device_and_dtype
from hubflow.doors import store
from hubflow.kinds.causal_lm.settings import CausalLMInference
from hubflow.refs import PinnedRepo
from hubflow.stages.predict import predict, read_manifest, read_predictions
from hubflow.stages.train import train_model
from tests.tiny import make_tiny_bert, make_tiny_tokenized

# int8 is a CPU workers' precision: a machine with a GPU refuses it (the last test), so these run where there is none.
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="int8 inference is refused on a machine with a GPU")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = PinnedRepo(repo_id="tiny/bert", repo_type="model", revision="main", sha="0" * 40)
CFG = TrainConfig(epochs=4, batch_size=16, learning_rate=5e-3, warmup_ratio=0.1, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    model_dir = make_tiny_bert(root / "bert")
    tokenized = make_tiny_tokenized(root / "tokenized", model_dir, sizes={"train": 240, "validation": 40, "test": 200})
    return train_model(tokenized, str(model_dir), BASE, CFG, str(root / "train")), tokenized


def cfg(precision: str) -> InferenceConfig:
    return InferenceConfig(batch_size=16, shard_size=64, precision=precision)


@cpu_only
def test_int8_predictions_mostly_agree_with_fp32(trained, tmp_path):
    ref, tokenized = trained
    fp32 = predict(ref.uri, ref.fingerprint, tokenized, "test", cfg("fp32"), str(tmp_path / "fp32"))
    int8 = predict(ref.uri, ref.fingerprint, tokenized, "test", cfg("int8"), str(tmp_path / "int8"))
    a, b = read_predictions(fp32), read_predictions(int8)
    assert a.num_rows == b.num_rows == 200 and a.column("row_id").equals(b.column("row_id"))
    pa_, pb = np.array(a.column("probs").to_pylist()), np.array(b.column("probs").to_pylist())
    assert np.allclose(pb.sum(axis=1), 1, atol=1e-5)
    assert 0 < np.abs(pa_ - pb).max() < 0.2  # int8 really ran (not bit-identical), and stays close
    agree = (pa_.argmax(1) == pb.argmax(1)).mean()
    assert agree >= 0.9, agree
    label = np.array(a.column("label").to_pylist())
    acc_a, acc_b = (pa_.argmax(1) == label).mean(), (pb.argmax(1) == label).mean()
    assert acc_a > 0.5 and abs(acc_a - acc_b) <= 0.05, (acc_a, acc_b)  # the model learnt; int8 keeps what it learnt
    assert read_manifest(fp32)["dtype"] == "torch.float32" and read_manifest(int8)["dtype"] == "torch.qint8"


@cpu_only
def test_shards_are_not_shared_between_precisions(trained, tmp_path, caplog):
    ref, tokenized = trained
    out = str(tmp_path / "shared")  # one folder for every precision: only the shard ids keep them apart
    fp32 = predict(ref.uri, ref.fingerprint, tokenized, "test", cfg("fp32"), out)
    fp32_files = {s["file"] for s in read_manifest(fp32)["shards"]}
    caplog.set_level("INFO", logger="hubflow")
    int8 = predict(ref.uri, ref.fingerprint, tokenized, "test", cfg("int8"), out)
    int8_files = {s["file"] for s in read_manifest(int8)["shards"]}
    assert len(int8_files) == len(fp32_files) == 4 and not int8_files & fp32_files
    assert "reused" not in caplog.text  # every int8 shard computed, none taken from the fp32 run
    assert {f for f in store.ls(out) if f.startswith("shard-")} == fp32_files | int8_files
    # A rerun in the same precision reuses its own shards; auto is fp32 on a CPU, so it shares fp32's.
    assert {s["file"] for s in read_manifest(predict(ref.uri, ref.fingerprint, tokenized, "test", cfg("int8"),
                                                     out))["shards"]} == int8_files
    assert "reused 4 of 4" in caplog.text
    auto = predict(ref.uri, ref.fingerprint, tokenized, "test", cfg("auto"), out)
    assert {s["file"] for s in read_manifest(auto)["shards"]} == fp32_files


def test_int8_is_refused_for_a_causal_lm_and_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a CPU worker answers
    with pytest.raises(ValueError, match="inference.precision=int8 is for text-classification; causal-lm"):
        CausalLMInference(precision=InferencePrecision.int8)  # the chat kind's inference settings
    assert device_and_dtype("int8") == (torch.device("cpu"), torch.qint8)
    recipe = {"model": {"repo_id": "a/b"}, "data": {"source": "c/d"}, "inference": {"precision": "int8"}}
    PipelineConfig.model_validate(recipe)  # a classifier on a CPU machine: fine
    with pytest.raises(ValueError, match="int8 is for text-classification"):
        PipelineConfig.model_validate({**recipe, "task": "causal-lm"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what a GPU machine answers
    with pytest.raises(ValueError, match="int8 is for CPU workers"):
        device_and_dtype("int8")
    with pytest.raises(ValueError, match="int8 is for CPU workers"):
        PipelineConfig.model_validate(recipe)
