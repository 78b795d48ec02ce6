"""The sentence-embedding handler behind `hubflow serve ns/name@sha` (a model repo on localhub), as a real process.

The unmodified clients: `huggingface_hub.InferenceClient(base_url=…).feature_extraction` (TEI's `POST /`) and the
`openai` package's `embeddings.create` (which asks for base64 by default). Vectors equal hubflow's encoder's for the
same texts (mean pooling, normalized, truncated at the folder's max_seq_length).
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve_procs import ServerProcess
from tests.tiny import FILLER, KEYWORDS, make_tiny_bert

TOKEN = "embed-test-token-0123456789"
MAX_LENGTH = 24
TEXTS = ["goal match", "rain storm forecast today", "the bank said the stock price fell",
         " ".join(FILLER + KEYWORDS["finance"])]  # the last: over MAX_LENGTH tokens, truncated


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory) -> Path:
    from hubflow.kinds.sentence_embedding import KIND
    from hubflow.kinds.sentence_embedding import model as emb_model
    from hubflow.kinds.sentence_embedding.settings import EmbeddingFacts, EmbeddingTrain
    from hubflow.stages.facts import write_facts

    base = make_tiny_bert(tmp_path_factory.mktemp("base") / "bert")
    embedder, tokenizer = emb_model.load_for_training(str(base), EmbeddingTrain(pooling="mean", normalize=True),
                                                      max_length=MAX_LENGTH)
    folder = KIND.save_model(embedder, tokenizer, tmp_path_factory.mktemp("emb"), base_model=None)["model"]
    write_facts(folder, EmbeddingFacts(max_length=MAX_LENGTH))
    return folder


@pytest.fixture(scope="module")
def served(embed_dir, localhub, tmp_path_factory):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    repo = "alice/serve-embeddings"
    api.create_repo(repo, exist_ok=True)
    sha = api.upload_folder(folder_path=str(embed_dir), repo_id=repo).oid
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN)
    proc = ServerProcess.cli(f"{repo}@{sha}", "--token-file", str(token_file))
    try:
        proc.wait_ready()
        yield type("Served", (), {"url": proc.url, "repo": repo, "sha": sha, "proc": proc})
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def want(embed_dir) -> np.ndarray:
    from hubflow.kinds.sentence_embedding.encode import Encoder

    return Encoder.load(embed_dir).encode(TEXTS)  # hubflow's batch encoder


def test_inference_client_feature_extraction_equals_hubflows_encoder(served, want):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=served.url, token=TOKEN)
    for text, vector in zip(TEXTS, want):
        got = client.feature_extraction(text)
        assert got.shape == (1, want.shape[1]) and np.abs(got[0] - vector).max() <= 1e-5, text
    assert np.allclose(np.linalg.norm(want, axis=1), 1.0, atol=1e-5)


def test_openai_client_embeddings_create_equals_hubflows_encoder(served, want):
    from openai import OpenAI

    client = OpenAI(base_url=served.url + "/v1", api_key=TOKEN)
    for encoding in (None, "float", "base64"):  # None: the client asks for base64 and decodes it itself
        kwargs = {"encoding_format": encoding} if encoding else {}
        answer = client.embeddings.create(input=TEXTS, model=served.repo, **kwargs)
        rows = [d.embedding for d in sorted(answer.data, key=lambda d: d.index)]
        if encoding == "base64":  # asked for explicitly: the client hands over the base64 text
            rows = [np.frombuffer(base64.b64decode(r), "<f4") for r in rows]
        assert np.abs(np.array(rows, np.float32) - want).max() <= 1e-5, encoding
        assert answer.usage.prompt_tokens > len(TEXTS) and answer.model == served.repo
    single = client.embeddings.create(input=TEXTS[0], model="any")
    assert np.abs(np.array(single.data[0].embedding) - want[0]).max() <= 1e-5


def test_tei_embed_normalize_and_truncate_as_asked(served, want):
    h = {"Authorization": f"Bearer {TOKEN}"}
    raw = httpx.post(served.url + "/embed", json={"inputs": TEXTS[:2], "normalize": False}, headers=h, timeout=30)
    vectors = np.array(raw.json())
    assert raw.status_code == 200 and not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.abs(unit - want[:2]).max() <= 1e-5  # the same direction: only the normalization was left out
    refused = httpx.post(served.url + "/embed", json={"inputs": TEXTS[-1], "truncate": False}, headers=h, timeout=30)
    assert refused.status_code == 422 and f"limit of {MAX_LENGTH}" in refused.json()["error"]
    for body in ({"inputs": []}, {"inputs": 5}, {"inputs": "x", "normalize": "yes"}, {"input": [[1, 2, 10 ** 9]]}):
        route = "/v1/embeddings" if "input" in body else "/embed"
        r = httpx.post(served.url + route, json=body, headers=h, timeout=30)
        assert r.status_code == 400 and "\n" not in r.json()["error"], (body, r.text)
    assert httpx.post(served.url + "/embed", json={"inputs": "x"}, timeout=30).status_code == 401


def test_info_names_the_pinned_repo_and_the_layout(served):
    info = httpx.get(served.url + "/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    assert (info["model_id"], info["model_sha"], info["task"]) == (served.repo, served.sha, "sentence-embedding")
    assert info["pooling"] == "mean" and info["normalize"] is True and info["max_input_length"] == MAX_LENGTH
    assert info["dimensions"] == 32  # the tiny BERT's hidden size
