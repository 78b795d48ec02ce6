"""Where a published model's reference comes from: its card. The `hubflow:` front-matter block names the dataset
and the sha it was trained on, the model-index the split it was evaluated on and the figures it was published with.

    reference_of(model: PinnedRepo) -> Reference(dataset@sha, split, card metrics)
    rows_of(ds, text_column, label_column, window) -> Rows (labels as class names when the column is a ClassLabel)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ..doors import hub
from ..refs import PinnedRepo
from .assess import Rows


class NoReference(ValueError):
    """The model's card does not say what it was evaluated on (not a hubflow-published model)."""


class Reference(BaseModel):
    """The data a published model was evaluated on, and the figures its card states."""

    model_config = ConfigDict(frozen=True)

    dataset: PinnedRepo
    split: str
    metrics: dict[str, float]


def card_metrics(card: dict[str, Any]) -> dict[str, float]:
    """model-index metrics by hubflow's names: `f1` with average=macro is `macro_f1`, the rest by their type."""
    out = {}
    for model in card.get("model-index") or []:
        for result in model.get("results") or []:
            for m in result.get("metrics") or []:
                args = m.get("args") or {}
                name = "macro_f1" if m.get("type") == "f1" and args.get("average") == "macro" else m.get("type")
                if name is not None and isinstance(m.get("value"), (int, float)):
                    out[name] = float(m["value"])
    return out


def _split(card: dict[str, Any]) -> str:
    for model in card.get("model-index") or []:
        for result in model.get("results") or []:
            split = (result.get("dataset") or {}).get("split")
            if split:
                return split
    return "test"


def reference_of(model: PinnedRepo) -> Reference:
    """The model card's lineage -> the evaluation dataset pinned at the sha it was trained from."""
    card = hub.card_data(model.repo_id, model.sha)
    lineage = card.get("hubflow") or {}
    if not lineage.get("dataset") or not lineage.get("dataset_sha"):
        raise NoReference(f"{model.repo_id}@{model.sha[:10]}: the card has no hubflow lineage (dataset and sha); "
                          "give the reference explicitly (reference: dataset repo, revision, split)")
    dataset = PinnedRepo(repo_id=lineage["dataset"], repo_type="dataset", revision=lineage["dataset_sha"],
                         sha=lineage["dataset_sha"])
    return Reference(dataset=dataset, split=_split(card), metrics=card_metrics(card))


def rows_of(ds, text_column: str, label_column: str | None = None, window: int | None = None,
            since: float | None = None,
            columns: tuple[str, ...] = ("answer_tokens", "completion_tokens", "finish_reason")) -> Rows:
    """A datasets.Dataset -> Rows: the last `window` rows (the newest, when rows are appended; ordered by the `time`
    column when there is one, and only those at or after `since`, epoch s, when given), the texts, the labels
    when `label_column` is there (ClassLabel ids as names), and the recorded answer columns a causal LM's monitor
    reads."""
    if text_column not in ds.column_names:
        raise ValueError(f"text column {text_column!r} is not in the rows; columns: {ds.column_names}")
    if "time" in ds.column_names:  # a served sample: files from several processes interleave; newest last
        times = ds["time"]
        ds = ds.select([i for i in sorted(range(len(ds)), key=times.__getitem__) if since is None or times[i] >= since])
    elif since is not None:
        raise ValueError(f"a time window needs a `time` column in the rows; columns: {ds.column_names}")
    if window and len(ds) > window:
        ds = ds.select(range(len(ds) - window, len(ds)))
    labels = None
    if label_column and label_column in ds.column_names:
        feature = ds.features[label_column]
        labels = ds[label_column]
        if hasattr(feature, "int2str"):
            labels = [feature.int2str(x) for x in labels]
    extra = {c: ds[c] for c in columns if c in ds.column_names}
    return Rows(texts=[str(t) for t in ds[text_column]], labels=labels, columns=extra)
