"""Sentence embeddings: fine-tune an encoder so that texts that mean the same are close (cosine similarity).

Data: pairs (anchor, positive, optional hard negative, optional score; settings.EmbeddingData). Training:
in-batch negatives (MNRL) or cosine-similarity regression (settings.EmbeddingTrain). Metrics: retrieval of
the test queries' relevant documents from a corpus (recall@1, recall@10, MRR@10, nDCG@10; the best checkpoint has the
highest validation nDCG@10). Model: the sentence-transformers layout. Predictions: id, text, vector per row.
Space: a gradio semantic search over a corpus dataset (space_app/).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from .. import Direction, KindDefaults
from . import data, metrics
from .settings import TASK, EmbeddingConfig, EmbeddingFacts


class SentenceEmbedding(KindDefaults):
    task = TASK
    settings = EmbeddingConfig
    facts = EmbeddingFacts
    pipeline_tag = "sentence-similarity"
    title = "Semantic search"
    metrics: ClassVar[dict[str, Direction]] = {name: Direction.higher for name in metrics.NAMES}
    default_metric = "ndcg_at_10"
    batch_invariant = True  # batch size and token budget change padding only (attention masks): vectors stay
    space_app = Path(__file__).parent / "space_app"
    serve_handler = Path(__file__).parent / "serve.py"  # hubflow serve, the endpoint Space's handler.py
    modules = ("hubflow.kinds.sentence_embedding",)

    @property
    def train_columns(self) -> list[str]:
        from .model import TRAIN_COLUMNS

        return TRAIN_COLUMNS

    # ---- data
    def raw_columns(self, data_cfg, available: list[str]) -> dict[str, str]:
        return self.own(data_cfg).pair_columns()

    def check_raw(self, splits: dict, data_cfg, columns: dict[str, str]) -> None:
        data_cfg = self.own(data_cfg)
        data.check_raw(splits, data_cfg, data_cfg.test_split)

    def prepare(self, raw, model_dir, cfg, data_cfg, out_uri):
        data_cfg = self.own(data_cfg)
        return data.prepare(raw, model_dir, cfg, data_cfg, data_cfg, out_uri, EmbeddingFacts(max_length=cfg.max_length))

    def prepare_inference(self, ds, data_cfg, model_dir: str, facts, out_root: str):
        data_cfg = self.own(data_cfg)
        return data.prepare_inference(ds, data_cfg, data_cfg.test_split or "test", model_dir, facts,
                                      out_root, data_cfg.max_test_samples)

    # ---- training
    def load_for_training(self, model_dir: str, facts, cfg, allow_pickle: bool = False):
        from .model import load_for_training

        return load_for_training(model_dir, self.own(cfg), facts.max_length, allow_pickle)

    def collator(self, tokenizer, on_gpu):
        from .model import collator

        return collator(tokenizer, on_gpu)

    def validate(self, model, eval_dl, accelerator, facts):
        from .model import validate

        return validate(model, eval_dl, accelerator)

    def rank(self, m: dict[str, float]) -> tuple:
        from .model import rank

        return rank(m)

    def save_model(self, model, tokenizer, out: Path, base_model) -> dict[str, Path]:
        from .st_format import save_sentence_transformer

        return {"model": save_sentence_transformer(model, tokenizer, Path(out) / "model")}

    # ---- inference and evaluation
    def load_predictor(self, folder, device, dtype):
        from .encode import Encoder

        return Encoder.load(folder, device, dtype)

    def predict_shard(self, predictor, part, cfg, shard_index: int):
        """Tokenized rows -> id, text, vector (list<float32>) [, role, relevant_ids on the test split], row_id."""
        import pyarrow as pa

        vectors = predictor.encode_ids(part.column("input_ids"), cfg.batch_size, cfg.max_tokens_per_batch)
        dim = vectors.shape[1]
        vector = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim).cast(
            pa.list_(pa.float32()))
        columns = {"row_id": part.column("row_id"), "id": part.column("id"), "text": part.column("text"),
                   "vector": vector}
        columns.update({c: part.column(c) for c in ("role", "relevant_ids") if c in part.column_names})
        return pa.table(columns)

    def score(self, table, facts) -> dict[str, Any]:
        return metrics.score(table)

    def headline(self, report: dict[str, Any]) -> dict[str, float]:
        return metrics.headline(report)

    def render(self, report, history):
        from ...figures import loss_curve

        figures = {"loss_curve.png": loss_curve(history)} if history and history.get("steps") else {}
        return metrics.render_markdown(report), figures

    def summarize(self, table) -> str:
        """A batch run's size: rows embedded and the vectors' dimension, as a markdown table."""
        dim = len(table.column("vector")[0].as_py()) if table.num_rows else 0
        return f"| rows embedded | dimensions |\n|---:|---:|\n| {table.num_rows} | {dim} |"

    def own_rows(self, table) -> dict[str, Any]:
        """Per-query metrics of this run's model on its test rows, for the gate's paired comparison."""
        return metrics.per_query(table)

    def champion_rows(self, model_dir: str, table, facts, cfg, metric: str) -> dict:
        """The champion embeds the same queries and corpus (at the challenger's precision) -> its per-query metrics."""
        import pyarrow as pa

        from .encode import encode_texts

        vectors = encode_texts(model_dir, table.column("text").to_pylist(), cfg.batch_size, cfg.precision)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), vectors.shape[1])
        return metrics.per_query(table.set_column(table.column_names.index("vector"), "vector",
                                                  column.cast(pa.list_(pa.float32()))))

    def metric(self, rows: dict[str, Any], name: str, idx) -> float:
        """`name` averaged over the queries at `idx` (a bootstrap resample, or all of them)."""
        return float(rows[name][idx].mean())

    # ---- publishing and the Space
    def card_summary(self, facts, m: dict[str, float], rows: int) -> str:
        return (f"A sentence-embedding model (sentence-transformers format, cosine similarity). On {rows} test "
                f"queries: nDCG@10 **{m['ndcg_at_10']:.4f}**, MRR@10 **{m['mrr_at_10']:.4f}**, recall@1 "
                f"**{m['recall_at_1']:.4f}**, recall@10 **{m['recall_at_10']:.4f}**.")

    def card_eval_results(self, m: dict[str, float]) -> list[dict[str, Any]]:
        names = {"ndcg_at_10": "nDCG@10", "mrr_at_10": "MRR@10", "recall_at_1": "Recall@1", "recall_at_10": "Recall@10"}
        return [{"metric_type": k, "metric_name": v, "metric_value": m[k]} for k, v in names.items()]

    def card_usage(self, repo_id: str, revision: str, facts) -> str:
        return "\n".join([
            "from sentence_transformers import SentenceTransformer", "",
            f'model = SentenceTransformer("{repo_id}", revision="{revision}")',
            'vectors = model.encode(["How do I reset my password?", "I forgot my login details"])',
            "print(model.similarity(vectors[:1], vectors[1:]))"])

    def foreign_facts(self, folder: Path, config: dict):
        """A sentence-transformers folder hubflow did not train (modules.json with a Pooling module): this kind."""
        modules = Path(folder, "modules.json")
        if not modules.exists() or "Pooling" not in modules.read_text():
            return None
        return EmbeddingFacts(max_length=0)

    def prediction_files_table(self, table, facts):
        return table.select([c for c in ("row_id", "id", "role", "text", "relevant_ids", "vector")
                             if c in table.column_names])

    def prediction_columns(self, facts) -> list[tuple[str, str]]:
        return [("row_id", "row index in the split"), ("id", "query id (q…) or document id"),
                ("role", "query or corpus (test split)"), ("text", "input text"),
                ("relevant_ids", "a query's relevant document ids"),
                ("vector", "sentence embedding (float32; unit length when the model normalizes)")]

    def space_variables(self, facts, space) -> dict[str, str]:
        return {"MAX_LENGTH": str(facts.max_length)}  # the corpus: the predictions published with the model

    def space_readme(self, facts, variables: dict[str, str]) -> dict[str, str]:
        return {"max_length": str(facts.max_length)}

    def reference_answers(self, rows: list[dict], model_dir: str, facts, space) -> list[tuple[str, str]]:
        return [(r["text"], json.dumps(r["vector"])) for r in rows]  # the batch vectors themselves

    def answer_texts(self, model_dir: str, texts: list[str], facts, space) -> list[str]:
        from .encode import encode_texts

        return [json.dumps(v.tolist()) for v in encode_texts(model_dir, texts, precision="fp32")]

    def ask_space(self, client, text: str) -> str:
        return client.predict(text, api_name="/embed")

    def answers_match(self, got: str, want: str | None, facts) -> bool:
        """The Space's vector for a text against the batch vector: the same direction (cosine >= 0.999; the batch may
        have run in bf16) and length."""
        import numpy as np

        g = np.asarray(json.loads(got), np.float64)
        if want is None:
            return g.ndim == 1 and g.size > 0 and bool(np.isfinite(g).all())
        w = np.asarray(json.loads(want), np.float64)
        if g.shape != w.shape:
            return False
        cos = g @ w / max(np.linalg.norm(g) * np.linalg.norm(w), 1e-12)
        return bool(cos >= 0.999 and abs(np.linalg.norm(g) - np.linalg.norm(w)) <= 1e-2 * max(np.linalg.norm(w), 1))


KIND = SentenceEmbedding()
