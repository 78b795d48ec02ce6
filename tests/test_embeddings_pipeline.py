"""The sentence-embedding kind end to end on localhub: the pipeline trains on (anchor, positive) pairs, publishes the
model (sentence-transformers format) and the test vectors as a dataset, and deploys the semantic-search Space; the
model reloads with `SentenceTransformer(repo, revision=sha)` and encodes the vectors hubflow published.
"""

from __future__ import annotations

import os
import random
import uuid

import numpy as np
import pyarrow as pa
import pytest

from tests.tiny import FILLER, KEYWORDS, push_parquet_dataset, push_tiny_bert

pytestmark = pytest.mark.usefixtures("prefect_api")
pytest.importorskip("sentence_transformers")


def _pairs(docs: list[tuple[str, str]], seed: int) -> pa.Table:
    """Each document is a pair of keywords; anchor and positive say them among different filler words."""
    rng = random.Random(seed)

    def say(doc):
        words = list(doc) + rng.choices(FILLER, k=rng.randint(3, 8))
        rng.shuffle(words)
        return " ".join(words)

    return pa.table({"anchor": [say(d) for d in docs], "positive": [say(d) for d in docs]})


@pytest.fixture(scope="module")
def released(localhub, tmp_path_factory):
    from huggingface_hub import HfApi

    from hubflow.config import PipelineConfig
    from hubflow.flows.pipeline import pipeline

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    base, data, target = f"alice/emb-base-{tag}", f"alice/emb-pairs-{tag}", f"alice/emb-{tag}"
    push_tiny_bert(api, base, tmp_path_factory.mktemp("bert"))
    words = [w for ws in KEYWORDS.values() for w in ws]
    docs = [(a, b) for i, a in enumerate(words) for b in words[i + 1:]]
    random.Random(0).shuffle(docs)
    push_parquet_dataset(api, data, tmp_path_factory.mktemp("pairs"), {
        "train": _pairs(docs[:160] * 2, 1), "validation": _pairs(docs[160:200], 2), "test": _pairs(docs[200:240], 3)})
    config = PipelineConfig.model_validate({
        "task": "sentence-embedding",
        "model": {"repo_id": base}, "data": {"source": data}, "preprocess": {"max_length": 32},
        "train": {"epochs": 2, "batch_size": 32, "learning_rate": 5e-3, "warmup_ratio": 0.1, "seed": 0},
        "inference": {"batch_size": 16, "shard_size": 16},
        "publish": {"enabled": True, "repo_id": target, "gate": {"mode": "off"}},
        "space": {"enabled": True, "timeout_seconds": 300},
        "artifact_store": str(tmp_path_factory.mktemp("store")),
    })
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        state = pipeline(config, return_state=True)
    finally:
        os.environ.pop("HF_TOKEN", None)
    assert state.is_completed(), state.message
    return api, state.result()


def test_the_published_model_reloads_with_sentence_transformers_and_encodes_the_published_vectors(released,
                                                                                                   localhub):
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer

    api, result = released
    model, predictions = result.published.model, result.published.predictions
    rows = load_dataset(predictions.repo_id, revision=predictions.sha, split="test",
                        token=localhub.token("alice")).to_list()
    assert len(rows) == result.predictions.rows and {"id", "text", "vector", "role"} <= set(rows[0])
    st = SentenceTransformer(model.repo_id, revision=model.sha, token=localhub.token("alice"), device="cpu")
    sample = rows[:8]
    ours = np.array([r["vector"] for r in sample], np.float32)
    theirs = st.encode([r["text"] for r in sample], normalize_embeddings=False)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # normalized: dot product = cosine


def test_retrieval_metrics_are_reported_and_carded(released, localhub):
    from huggingface_hub import ModelCard

    api, result = released
    metrics = result.evaluation.metrics
    assert {"ndcg_at_10", "mrr_at_10", "recall_at_1", "recall_at_10"} <= set(metrics)
    assert 0.0 <= metrics["recall_at_1"] <= metrics["recall_at_10"] <= 1.0
    model = result.published.model
    card = ModelCard.load(model.repo_id, token=localhub.token("alice"))
    assert card.data.pipeline_tag == "sentence-similarity" and "nDCG@10" in card.text
    assert f'SentenceTransformer("{model.repo_id}", revision=' in card.text


def test_the_search_space_serves_the_published_corpus(released, localhub):
    from gradio_client import Client

    api, result = released
    space = result.space
    assert space.stage == "RUNNING" and space.model == result.published.model
    variables = {k: v.value for k, v in api.get_space_variables(space.space_id).items()}
    assert variables["DATASET_ID"] == result.published.predictions.repo_id
    assert variables["DATASET_REVISION"] == result.published.predictions.sha
    client = Client(space.url, verbose=False, analytics_enabled=False, download_files=False,
                    token=localhub.token("alice"))
    query = "goal match"
    answer = client.predict(query, api_name="/search")
    assert "goal" in str(answer) or "match" in str(answer), answer
