"""Text classification: fine-tune an encoder (or a decoder with a classification head) to assign one of N labels.

Data: a text column and a label column (ClassLabel ids, strings, ints or booleans); missing validation/test splits
are carved from train, stratified. Metrics: accuracy and macro-F1 (the best checkpoint has the highest validation
macro-F1). Predictions: pred, pred_label, score, probs per row. Space: a gradio classifier (space_app/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import DataConfig, InferenceConfig, SpaceConfig, TrainConfig
from ...refs import ModelFacts
from .. import Direction, KindDefaults
from . import data, metrics, settings


class TextClassification(KindDefaults):
    task = settings.TASK
    facts = settings.ClassifierFacts  # (before the next line rebinds `settings` in the class body)
    settings = settings.ClassifierConfig
    pipeline_tag = "text-classification"
    title = "Text classification"
    metrics = {"accuracy": Direction.higher, "macro_f1": Direction.higher}
    default_metric = "macro_f1"
    batch_invariant = True  # batch size and token budget change padding only: predictions stay the same
    space_app = Path(__file__).parent / "space_app"
    serve_handler = Path(__file__).parent / "serve.py"  # hubflow serve, the endpoint Space's handler.py
    modules = ("hubflow.kinds.text_classification",)

    @property
    def train_columns(self) -> list[str]:
        from .model import TRAIN_COLUMNS

        return TRAIN_COLUMNS

    # ---- data
    def raw_columns(self, data_cfg: DataConfig, available: list[str]) -> dict[str, str]:
        data_cfg = self.own(data_cfg)
        if data_cfg.text_column == data_cfg.label_column:
            raise ValueError(f"data.text_column and data.label_column are both {data_cfg.text_column!r}")
        return {"text": data_cfg.text_column, "label": data_cfg.label_column}

    def check_raw(self, splits: dict, data_cfg: DataConfig, columns: dict[str, str]) -> None:
        data_cfg = self.own(data_cfg)
        data.check_raw(splits, data_cfg)

    def prepare(self, raw, model_dir, cfg, data_cfg, out_uri):
        data_cfg = self.own(data_cfg)
        cfg = self.own(cfg)
        return data.prepare(raw, model_dir, cfg, data_cfg, out_uri)

    def prepare_inference(self, ds, data_cfg: DataConfig, model_dir: str, facts: ModelFacts, out_root: str):
        data_cfg = self.own(data_cfg)
        return data.prepare_inference(ds, data_cfg.text_column, data_cfg.test_split, model_dir, facts, out_root,
                                      data_cfg.max_test_samples)

    # ---- training
    def load_for_training(self, model_dir: str, facts: ModelFacts, cfg: TrainConfig, allow_pickle: bool = False):
        cfg = self.own(cfg)
        from .model import load_for_training

        return load_for_training(model_dir, facts, allow_pickle)

    def collator(self, tokenizer, on_gpu):
        from .model import collator

        return collator(tokenizer, on_gpu)

    def validate(self, model, eval_dl, accelerator, facts):
        from .model import validate

        return validate(model, eval_dl, accelerator, facts)

    # ---- inference and evaluation
    def load_predictor(self, folder, device, dtype):
        from .model import Classifier

        return Classifier.load(folder, device, dtype)

    def predict_shard(self, predictor, part, cfg: InferenceConfig, shard_index: int):
        cfg = self.own(cfg)
        from .model import shard_rows

        probs = predictor.probs(part.column("input_ids"), cfg.batch_size, cfg.max_tokens_per_batch)
        return shard_rows(part, probs, predictor.label_names)

    def score(self, table, facts: ModelFacts) -> dict[str, Any]:
        return metrics.score(table, facts.label_names)

    def headline(self, report: dict[str, Any]) -> dict[str, float]:
        return metrics.headline(report)

    def render(self, report, history):
        return metrics.render_markdown(report), metrics.render_figures(report, history)

    def summarize(self, table) -> str:
        """Predicted-label counts of a batch run, as a markdown table."""
        import pyarrow.compute as pc

        counts = {r["values"]: r["counts"] for r in pc.value_counts(table.column("pred_label")).to_pylist()}
        lines = ["| predicted label | rows | share |", "|---|---:|---:|"]
        lines += [f"| {label} | {n} | {n / max(table.num_rows, 1):.1%} |" for label, n in sorted(counts.items())]
        return "\n".join(lines)

    def own_rows(self, table) -> dict[str, Any]:
        """Per-row outcomes of this run's model on its test rows, for the gate's paired comparison."""
        return {"label": table.column("label").to_numpy(), "pred": table.column("pred").to_numpy()}

    def champion_rows(self, model_dir: str, table, facts: ModelFacts, cfg: InferenceConfig, metric: str) -> dict:
        """Another model (the champion) on the same rows' texts, compared by class name: it may order its classes
        differently, or know a class this run's model lacks (then its id is one past this run's last)."""
        cfg = self.own(cfg)
        import numpy as np

        from .model import predict_texts

        names = list(facts.label_names)
        # At the challenger's precision: an int8 challenger is compared with an int8 champion, like for like.
        preds = predict_texts(model_dir, table.column("text").to_pylist(), batch_size=cfg.batch_size,
                              max_length=facts.max_length, precision=cfg.precision)
        y_pred = np.array([names.index(p["label"]) if p["label"] in names else len(names) for p in preds], np.int64)
        return {"label": table.column("label").to_numpy(), "pred": y_pred}

    def metric(self, rows: dict[str, Any], name: str, idx) -> float:
        """`name` (accuracy or macro_f1) over the rows at `idx` (a bootstrap resample, or all of them)."""
        y_true, y_pred = rows["label"][idx], rows["pred"][idx]
        n = int(max(rows["label"].max(), rows["pred"].max())) + 1
        return metrics.scores_from_confusion(metrics.confusion_matrix(y_true, y_pred, n))[name]

    # ---- publishing and the Space
    def card_summary(self, facts: ModelFacts, m: dict[str, float], rows: int) -> str:
        names = facts.label_names
        return (f"A text classifier ({len(names)} classes: {', '.join(f'`{n}`' for n in names)}). Test accuracy "
                f"**{m['accuracy']:.4f}**, macro-F1 **{m['macro_f1']:.4f}** on {rows} rows."
                + (" The base tokenizer has no pad token, so batches are padded with its EOS token and the config's "
                   "`pad_token_id` is set to it: the classification head pools the last real token of each text."
                   if facts.pad_with_eos else ""))

    def card_eval_results(self, m: dict[str, float]) -> list[dict[str, Any]]:
        return [dict(metric_type="accuracy", metric_name="Accuracy", metric_value=m["accuracy"]),
                dict(metric_type="f1", metric_name="Macro F1", metric_value=m["macro_f1"],
                     metric_args={"average": "macro"})]

    def card_usage(self, repo_id: str, revision: str, facts: ModelFacts) -> str:
        return "\n".join([
            "from transformers import pipeline", "",
            f'classifier = pipeline("text-classification", model="{repo_id}", revision="{revision}")',
            'classifier("Your text here")'])

    def prediction_files_table(self, table, facts: ModelFacts):
        """Prediction rows -> the published table: class ids as a ClassLabel, so the dataset carries the names."""
        from datasets import ClassLabel, Features, Value

        table = table.select([c for c in ("row_id", "text", "label", "pred", "pred_label", "score")
                              if c in table.column_names])
        classes = ClassLabel(names=list(facts.label_names))
        kinds = {"row_id": Value("int64"), "text": Value("string"), "label": classes, "pred": classes,
                 "pred_label": Value("string"), "score": Value("float32")}
        return table.cast(Features({c: kinds[c] for c in table.column_names}).arrow_schema)

    def prediction_columns(self, facts: ModelFacts) -> list[tuple[str, str]]:
        ids = ", ".join(f"{i} = `{n}`" for i, n in enumerate(facts.label_names))
        return [("row_id", "row index in the test split"), ("text", "input text"), ("label", f"true class id ({ids})"),
                ("pred", "predicted class id"), ("pred_label", "predicted class name"),
                ("score", "probability of the predicted class")]

    def space_variables(self, facts: ModelFacts, space: SpaceConfig) -> dict[str, str]:
        space = self.own(space)
        return {"MAX_LENGTH": str(facts.max_length)}

    def reference_answers(self, rows: list[dict], model_dir: str, facts: ModelFacts,
                          space: SpaceConfig) -> list[tuple[str, str]]:
        space = self.own(space)
        return [(r["text"], r["pred_label"]) for r in rows]  # the batch predictions themselves

    def answer_texts(self, model_dir: str, texts: list[str], facts: ModelFacts, space: SpaceConfig) -> list[str]:
        space = self.own(space)
        from .model import predict_texts

        return [p["label"] for p in predict_texts(model_dir, texts, max_length=facts.max_length)]

    def ask_space(self, client, text: str) -> str:
        return client.predict(text, api_name="/predict")["label"]

    def answers_match(self, got: str, want: str | None, facts: ModelFacts) -> bool:
        return got == want if want is not None else got in facts.label_names

    def space_readme(self, facts: ModelFacts, variables: dict[str, str]) -> dict[str, str]:
        return {"labels": ", ".join(facts.label_names), "max_length": str(facts.max_length)}

    def foreign_facts(self, folder: Path, config: dict) -> ModelFacts | None:
        """A model hubflow did not train (a Hub model) is read as a classifier unless another kind claims it:
        config.json's labels; its limit is found by the caller."""
        id2label = config.get("id2label") or {}
        return settings.ClassifierFacts(max_length=0, label_names=[id2label[str(i)] for i in range(len(id2label))])


KIND = TextClassification()
