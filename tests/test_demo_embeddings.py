"""`hubflow demo --task sentence-embedding` as a user runs it: a subprocess, a fresh work dir, the real
all-MiniLM-L6-v2; then the published model, reloaded with sentence-transformers from that demo's localhub at its
published sha, encodes the vectors the demo published.

The demo test is slow (about 5 minutes on 2 cores): `pytest -m slow tests/test_demo_embeddings.py`
(tests/test_embeddings_pipeline.py is the kind's fast path). The data, recipe and CLI checks at the top run in the
default selection.
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
DEMO_TIMEOUT = 1200  # about 5 minutes on 2 idle cores; more when they are shared
METRICS = ("recall_at_1", "recall_at_10", "mrr_at_10", "ndcg_at_10")

# In a fresh process pointed at the demo's hub: the published model at its sha, and the vectors published with it.
RELOAD = """
import json, sys
import numpy as np
from datasets import load_dataset
from sentence_transformers import SentenceTransformer
model_repo, model_sha, data_repo, data_sha = sys.argv[1:5]
rows = load_dataset(data_repo, revision=data_sha, split="test").select(range(16)).to_list()
st = SentenceTransformer(model_repo, revision=model_sha, device="cpu")
theirs = st.encode([r["text"] for r in rows], normalize_embeddings=False)
ours = np.array([r["vector"] for r in rows], np.float32)
print(json.dumps({"max_abs_diff": float(np.abs(ours - theirs).max()), "dim": int(theirs.shape[1]),
                  "norms": np.linalg.norm(theirs, axis=1).round(5).tolist()}))
"""


def test_the_search_pairs_are_deterministic_and_the_test_tickets_are_held_out():
    from hubflow.ops.demo_embeddings import build_search_pairs

    first, again = build_search_pairs(0), build_search_pairs(0)
    assert {s: len(d) for s, d in first.items()} == {"train": 4000, "validation": 200, "test": 400}
    assert all(first[s].column_names == ["anchor", "positive"] for s in first)
    assert all(first[s].to_dict() == again[s].to_dict() for s in first)
    tickets = {s: set(d["positive"]) for s, d in first.items()}
    assert not (tickets["test"] & (tickets["train"] | tickets["validation"]))  # the test searches unseen tickets
    assert len(tickets["test"]) == 400  # one ticket per test query: each query has exactly one right answer
    assert all(a != p for a, p in zip(first["test"]["anchor"], first["test"]["positive"]))


def test_the_recipe_is_the_seeded_pairs_dataset_on_minilm():
    from hubflow.config import load_recipe
    from hubflow.ops.demo import DEMO_MODEL
    from hubflow.ops.demo_embeddings import EMBEDDINGS_RECIPE, SEARCH_DATASET

    config = load_recipe(EMBEDDINGS_RECIPE)
    assert config.task == "sentence-embedding" and type(config).__name__ == "EmbeddingConfig"
    assert config.model.repo_id == DEMO_MODEL and config.data.source == SEARCH_DATASET
    assert config.train.loss.value == "mnrl" and config.publish.enabled and config.space.enabled
    assert config.publish.gate.metric.value == "ndcg_at_10"


def test_every_demo_the_cli_offers_is_an_installed_kind():
    import importlib

    from hubflow.kinds import tasks
    from hubflow.ops.cli import DEMOS, parser

    assert set(DEMOS) <= set(tasks())
    for module, function in DEMOS.values():
        assert callable(getattr(importlib.import_module(module), function))
    assert parser().parse_args(["demo", "--task", "sentence-embedding"]).task == "sentence-embedding"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFECT_", "TQDM_", "TRANSFORMERS_"))}


@pytest.fixture(scope="module")
def embeddings_demo(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    workdir = tmp_path_factory.mktemp("embeddings-demo")
    proc = subprocess.run([HUBFLOW, "demo", "--task", "sentence-embedding", "--workdir", str(workdir)],
                          env=_clean_env(), capture_output=True, text=True, timeout=DEMO_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "before (base)" in proc.stdout and "prefect server start" in proc.stdout
    return workdir, json.loads((workdir / "summary.json").read_text()), proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT + 600)  # the first one also runs the demo
def test_fine_tuning_beats_the_base_model_on_the_same_queries(embeddings_demo):
    _, summary, out = embeddings_demo
    before, after = summary["before"], summary["metrics"]
    assert set(METRICS) <= set(before) and set(METRICS) <= set(after)
    assert after["test_rows"] == before["test_rows"] == 400
    assert after["ndcg_at_10"] > before["ndcg_at_10"], (before, after)
    assert summary["improved"]["ndcg_at_10"] is True
    assert 0.0 <= after["recall_at_1"] <= after["recall_at_10"] <= 1.0
    assert summary["stages"]["preprocess"] == "Cached"  # the baseline scored the base model on these very rows
    assert summary["baseline"]["stages"]["preprocess"] == "Completed"
    assert all(e["before"] != e["relevant"] for e in summary["examples"])  # queries the base model got wrong
    assert f"{after['ndcg_at_10']:.4f}" in out and f"{before['ndcg_at_10']:.4f}" in out  # printed, before and after


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT + 600)
def test_the_demo_publishes_the_model_and_embeddings_and_the_space_runs(embeddings_demo):
    workdir, summary, _ = embeddings_demo
    assert summary["pinned"]["base_model"]["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert summary["pinned"]["dataset"]["repo_id"] == "hubflow-demo/support-ticket-search"
    pub = summary["published"]
    assert pub["promoted"] is True, pub
    assert pub["model"]["repo_id"] == "demo/minilm-support-search" and len(pub["model"]["commit"]) == 40
    assert pub["predictions"]["repo_id"] == "demo/minilm-support-search-predictions"
    assert summary["space"]["id"] == "demo/minilm-support-search-demo"
    assert summary["space"]["stage"] == "RUNNING", summary["space"]
    for name, uri in summary["outputs"].items():
        assert uri.startswith(str(workdir)) and Path(uri).exists(), (name, uri)


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT + 600)
def test_the_model_reloads_with_sentence_transformers_at_its_sha(embeddings_demo, tmp_path):
    """The demo's localhub stopped with it; its data dir serves the published repos again, to a fresh client."""
    from localhub import LocalHub

    workdir, summary, _ = embeddings_demo
    model, predictions = summary["published"]["model"], summary["published"]["predictions"]
    token = secrets.token_hex(16)
    with LocalHub(workdir / "hub", users={"demo": (token, "write")}) as hub:
        env = {**_clean_env(), "HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HOME": str(tmp_path / "hf_home"),
               "HF_HUB_DISABLE_XET": "1"}
        proc = subprocess.run([sys.executable, "-c", RELOAD, model["repo_id"], model["commit"],
                               predictions["repo_id"], predictions["commit"]], env=env, capture_output=True,
                              text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["dim"] == 384 and got["max_abs_diff"] <= 1e-5, got  # the vectors the demo published
    assert all(abs(n - 1.0) <= 1e-4 for n in got["norms"]), got  # normalized, as MiniLM is


def test_a_failed_embeddings_demo_prints_its_cause_once_with_the_stage(tmp_path):
    """The base model's run fails on a misnamed column: one line with the flow, the stage and the cause, no
    traceback, exit 1 (before any training)."""
    proc = subprocess.run([HUBFLOW, "demo", "--task", "sentence-embedding", "--workdir", str(tmp_path / "demo"),
                           "--set", "data.anchor_column=query"], env=_clean_env(), capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    cause = [line for line in out.splitlines() if line.startswith("hubflow demo:")]
    assert len(cause) == 1 and cause[0].startswith("hubflow demo: the base model's run failed: in pull-dataset: "), \
        out[-4000:]
    assert "'query'" in cause[0], cause
