"""Evaluate stored predictions with the task kind's metrics.

predictions (PredictionsRef) + the model's facts -> `{out_uri}/report.json` + the kind's figures (PNG) -> EvalRef,
whose `metrics` are the kind's headline metrics (what the gate and the card read).
"""

from __future__ import annotations

from typing import Any

from ..doors import store
from ..kinds import kind_for
from ..refs import EvalRef, ModelFacts, PredictionsRef
from .predict import read_manifest, read_predictions


def evaluate_predictions(pred: PredictionsRef, facts: ModelFacts, out_uri: str,
                         history_uri: str | None = None) -> EvalRef:
    """Score the predictions against their references; write report.json and the figures under `out_uri`."""
    kind = kind_for(facts.task)
    manifest = read_manifest(pred)
    try:
        report = kind.score(read_predictions(pred), facts)
    except ValueError as err:
        raise ValueError(f"predictions at {pred.uri}: {err}") from None
    report.update(split=manifest["split"], predictions_uri=pred.uri, model_fingerprint=pred.model_fingerprint,
                  data_fingerprint=pred.data_fingerprint)
    report_uri = store.write_json(store.join(out_uri, "report.json"), report)
    _, figures = kind.render(report, store.read_json(history_uri) if history_uri else None)
    for name, png in figures.items():
        store.write_bytes(store.join(out_uri, name), png)
    return EvalRef(uri=report_uri, split=manifest["split"], metrics=kind.headline(report))


def render(evaluation: EvalRef, facts: ModelFacts, history_uri: str | None) -> tuple[str, dict[str, bytes]]:
    """A stored report -> (markdown tables, {name: PNG}) for an artifact or a card."""
    report: dict[str, Any] = store.read_json(evaluation.uri)
    return kind_for(facts.task).render(report, store.read_json(history_uri) if history_uri else None)
