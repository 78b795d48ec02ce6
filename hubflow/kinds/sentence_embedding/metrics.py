"""Retrieval metrics in exact numpy: each query's ranking of the corpus by cosine similarity, scored against the
corpus ids relevant to it.

    top_k(queries, corpus, k)                       vectors -> [q, k] corpus indices, best first, ties by corpus order
    retrieval_scores(queries, corpus, relevant)     -> {recall_at_1, recall_at_10, mrr_at_10, ndcg_at_10}: per query
    score(table)                                    prediction rows (queries + corpus) -> the report `report.json` holds
    headline(report), render_markdown(report)

Definitions (binary relevance, as sentence-transformers' InformationRetrievalEvaluator and BEIR): recall@k = share of
a query's relevant documents in its top k; MRR@10 = 1 / rank of the first relevant document in the top 10, else 0;
nDCG@10 = sum over the top 10 of rel_i / log2(i + 1), divided by the same sum for the ideal ranking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NAMES = ("recall_at_1", "recall_at_10", "mrr_at_10", "ndcg_at_10")
K = 10
_CHUNK = 1024  # queries ranked at a time: a [chunk, corpus] float64 block bounds the memory


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Query and corpus vectors -> the k most cosine-similar corpus indices per query, best first.

    Similarities are computed in float64 and sorted stably, so equal scores rank by corpus order: the same vectors
    always give the same ranking, whatever the thread count."""
    q, c = _unit(queries), _unit(corpus)
    k = min(k, len(c))
    out = np.empty((len(q), k), np.int64)
    for i in range(0, len(q), _CHUNK):
        sims = q[i:i + _CHUNK] @ c.T
        out[i:i + _CHUNK] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return out


def retrieval_scores(queries: np.ndarray, corpus: np.ndarray, relevant: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Vectors and, per query, the corpus indices relevant to it -> {metric: float64 array, one value per query}."""
    if len(relevant) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(relevant)} relevance lists")
    if any(len(r) == 0 for r in relevant):
        raise ValueError(f"{sum(len(r) == 0 for r in relevant)} queries have no relevant corpus document")
    ranked = top_k(queries, corpus, K)
    hits = np.zeros((len(queries), K), bool)  # hits[q, i]: the (i+1)-th ranked document is relevant to q
    for qi, rel in enumerate(relevant):
        hits[qi, :ranked.shape[1]] = np.isin(ranked[qi], rel)
    n_rel = np.array([len(np.unique(r)) for r in relevant], np.float64)
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    ideal = np.cumsum(discounts)[np.minimum(n_rel, K).astype(int) - 1]
    return {
        "recall_at_1": hits[:, :1].sum(axis=1) / n_rel,
        "recall_at_10": hits.sum(axis=1) / n_rel,
        "mrr_at_10": np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0),
        "ndcg_at_10": (hits * discounts).sum(axis=1) / ideal,
    }


def per_query(table) -> dict[str, np.ndarray]:
    """Prediction rows -> per-query metric arrays. Rows with role `query` carry `relevant_ids` (corpus ids); rows
    with role `corpus` carry the documents. Both have `id` and `vector`."""
    import pyarrow.compute as pc

    missing = [c for c in ("id", "vector", "role", "relevant_ids") if c not in table.column_names]
    if missing:
        raise ValueError(f"the predictions lack {missing}; retrieval needs query and corpus rows")
    queries = table.filter(pc.equal(table.column("role"), "query"))
    corpus = table.filter(pc.equal(table.column("role"), "corpus"))
    if not queries.num_rows or not corpus.num_rows:
        raise ValueError(f"the predictions hold {queries.num_rows} queries and {corpus.num_rows} corpus rows; "
                         "retrieval needs both")
    ids = corpus.column("id").to_pylist()
    index = {doc: i for i, doc in enumerate(ids)}
    relevant = [np.array([index[d] for d in rel if d in index], np.int64)
                for rel in queries.column("relevant_ids").to_pylist()]
    return retrieval_scores(vectors(queries), vectors(corpus), relevant)


def vectors(table) -> np.ndarray:
    """A `vector` list<float32> column -> [rows, dim] float32."""
    col = table.column("vector").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1) if len(col) else np.zeros((0, 0), np.float32)


def score(table) -> dict[str, Any]:
    """Prediction rows -> the report: mean of each metric over the queries, and the counts."""
    scores = per_query(table)
    rows = len(scores["ndcg_at_10"])
    corpus = int(sum(1 for r in table.column("role").to_pylist() if r == "corpus"))
    return {"rows": rows, "corpus": corpus, **{k: float(v.mean()) for k, v in scores.items()}}


def headline(report: dict[str, Any]) -> dict[str, float]:
    return {**{k: report[k] for k in NAMES}, "test_rows": float(report["rows"])}


def render_markdown(report: dict[str, Any]) -> str:
    """One markdown table: the four retrieval metrics, the query and corpus counts."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name.replace('_at_', '@').replace('_', ' ')} | {report[name]:.4f} |" for name in NAMES]
    lines += [f"| queries | {report['rows']} |", f"| corpus documents | {report['corpus']} |"]
    return "\n".join(lines) + "\n"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
