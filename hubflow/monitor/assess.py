"""One batch against the reference -> a MonitorReport (scores, verdicts, timings). No I/O beyond loading the model.

    assess(kind_monitor, model_dir, facts, reference, batch, card, th) -> MonitorReport

`reference` and `batch` are `Rows`: texts, optional labels, optional other columns (answers, finish reasons).
The reference is observed once per model folder and cached (the nightly monitor of one model repeats it)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from .settings import Thresholds
from .signals import Score


class Rows(BaseModel):
    """Rows to monitor: the input texts, their labels when known, and other recorded columns."""

    model_config = ConfigDict(frozen=True)

    texts: list[str]
    labels: list[Any] | None = None
    columns: dict[str, list[Any]] = {}


class MonitorReport(BaseModel):
    """What the monitor found: every score, and the two verdicts the events carry."""

    model_config = ConfigDict(frozen=True)

    task: str
    reference_rows: int
    batch_rows: int
    labelled_rows: int
    scores: list[Score]
    drift: bool  # a drift score alarmed: hubflow.model.drift
    degraded: bool  # live accuracy is below the card's: hubflow.model.degraded
    seconds: float
    note: str = ""
    plots: dict[str, list[float]] = {}  # small series for the report's figure (label shares, ...)

    def alarms(self, signal: str | None = None) -> list[Score]:
        return [s for s in self.scores if s.alarm and (signal is None or s.signal == signal)]

    def payload(self) -> dict[str, Any]:
        """The event payload: every score's value, the alarms by name, the row counts."""
        return {"scores": {s.name: s.value for s in self.scores},
                "thresholds": {s.name: s.threshold for s in self.scores},
                "alarms": [s.name for s in self.alarms()], "batch_rows": self.batch_rows,
                "labelled_rows": self.labelled_rows, "reference_rows": self.reference_rows}


_observed: dict[tuple, dict] = {}


def observe_reference(monitor, model_dir: str, facts, reference: Rows) -> dict:
    """The kind's observations of the reference, cached by (model folder, texts)."""
    key = (str(model_dir), hash(tuple(reference.texts)))
    if key not in _observed:
        _observed.clear()  # one model's reference at a time: small and enough for a process that monitors one model
        _observed[key] = monitor.observe(model_dir, facts, reference.texts, reference.columns)
    return _observed[key]


def assess(monitor, model_dir: str, facts, reference: Rows, batch: Rows, card: dict[str, float],
           th: Thresholds) -> MonitorReport:
    """Observe both sides with the kind's monitor, score every signal it has, and live accuracy when the batch is
    labelled and the kind can score it. Too few rows -> no verdict (a note says why)."""
    start = time.perf_counter()
    common = dict(task=facts.task, reference_rows=len(reference.texts), batch_rows=len(batch.texts),
                  labelled_rows=len(batch.labels or []))
    if len(batch.texts) < th.min_rows or len(reference.texts) < th.min_rows:
        return MonitorReport(**common, scores=[], drift=False, degraded=False, seconds=0.0,
                             note=f"too few rows to test (at least {th.min_rows} on each side)")
    ref = observe_reference(monitor, model_dir, facts, reference)
    new = monitor.observe(model_dir, facts, batch.texts, batch.columns)
    scores = monitor.signals(ref, new, reference.texts, batch.texts, th)
    note = ""
    if batch.labels:
        if hasattr(monitor, "accuracy"):
            scores += monitor.accuracy(new, batch.labels, facts, card, th)
        else:
            note = f"labels present, but live accuracy is not scored for {facts.task}"
    plots = {}
    if hasattr(monitor, "label_shares"):
        plots = {"reference_labels": monitor.label_shares(ref).tolist(),
                 "batch_labels": monitor.label_shares(new).tolist()}
    return MonitorReport(**common, scores=scores, note=note, plots=plots,
                         drift=any(s.alarm and s.signal == "drift" for s in scores),
                         degraded=any(s.alarm and s.signal == "degraded" for s in scores),
                         seconds=round(time.perf_counter() - start, 3))
