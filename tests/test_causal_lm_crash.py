"""kill -9 in the middle of LLM training and of batch generation: a rerun resumes, ends where an unbroken run ends,
and loses or duplicates no row. The work runs in a child process killed with SIGKILL (no cleanup runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from hubflow.config import DataConfig, PreprocessConfig
from hubflow.kinds import kind_for
from hubflow.kinds.causal_lm.settings import CausalLMInference, CausalLMTrain
from hubflow.refs import PinnedRepo
from hubflow.stages import pull
from hubflow.stages.predict import read_predictions
from tests.tiny import TINY_CHAT_TEMPLATE, chat_rows, make_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
BASE = PinnedRepo(repo_id="tiny/llama", repo_type="model", revision="main", sha="2" * 40)
LORA = CausalLMTrain(method="lora", epochs=3, batch_size=8, learning_rate=3e-2, checkpoint_every_steps=5, seed=0,
                   lora={"r": 4, "alpha": 8})
GEN = CausalLMInference(batch_size=4, shard_size=4, generation={"max_new_tokens": 24})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    llama = make_tiny_llama(root / "llama", chat_template=TINY_CHAT_TEMPLATE, hidden=64)
    kind = kind_for("causal-lm")
    dsd = DatasetDict(train=Dataset.from_list(chat_rows(160, 0)), test=Dataset.from_list(chat_rows(40, 1)))
    raw = pull.write_raw_splits(dsd, DataConfig(source="x"), kind, str(root / "raw"), "x", None)
    tokenized = kind.prepare(raw, str(llama), PreprocessConfig(max_length=96), DataConfig(source="x"),
                             str(root / "tok"))
    return root, llama, tokenized


def _train_cmd(llama, tokenized, out) -> list[str]:
    return [sys.executable, "-m", "hubflow.stages.train", "--tokenized-ref", tokenized.model_dump_json(),
            "--model-dir", str(llama), "--base-model", BASE.model_dump_json(), "--config", LORA.model_dump_json(),
            "--out-uri", str(out)]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the child finished before it could be killed"
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_during_lora_training_resumes_to_the_same_adapter(setup):
    root, llama, tokenized = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    unbroken = subprocess.run(_train_cmd(llama, tokenized, root / "unbroken"), env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    want = json.loads(unbroken.stdout.strip().splitlines()[-1])

    out = root / "killed"
    proc = subprocess.Popen(_train_cmd(llama, tokenized, out), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: (out / "resume" / "latest.json").exists())
    again = subprocess.run(_train_cmd(llama, tokenized, out), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    got = json.loads(again.stdout.strip().splitlines()[-1])
    history = json.loads((out / "history.json").read_text())
    assert history["resumed_from"] and history["resumed_from"][0] >= 5
    assert (got["adapter_fingerprint"], got["fingerprint"]) == (want["adapter_fingerprint"], want["fingerprint"])


def test_kill_9_during_generation_loses_and_duplicates_no_row(setup):
    from hubflow.stages.facts import weights_fingerprint
    from hubflow.stages.predict import predict

    root, llama, tokenized = setup
    whole = predict(str(llama), weights_fingerprint(llama), tokenized, "test", GEN, str(root / "whole"))
    out = root / "gen"
    script = (
        "import sys; from hubflow.refs import TokenizedRef; from hubflow.config import InferenceConfig;"
        "from hubflow.stages.predict import predict; from hubflow.stages.facts import weights_fingerprint;"
        "predict(sys.argv[1], weights_fingerprint(sys.argv[1]), TokenizedRef.model_validate_json(sys.argv[2]), 'test',"
        " InferenceConfig.model_validate_json(sys.argv[3]), sys.argv[4])"
    )
    cmd = [sys.executable, "-c", script, str(llama), tokenized.model_dump_json(), GEN.model_dump_json(), str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: len(list(out.glob("shard-*.parquet"))) >= 2)
    done_before = {p.name for p in out.glob("shard-*.parquet")}
    assert 2 <= len(done_before) < whole.shards and not (out / "manifest.json").exists()
    again = predict(str(llama), weights_fingerprint(llama), tokenized, "test", GEN, str(out))
    assert read_predictions(again).to_pylist() == read_predictions(whole).to_pylist()
