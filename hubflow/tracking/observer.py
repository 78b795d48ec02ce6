"""A training observer that logs to MLflow: the loss curve, learning rate, per-epoch validation, system figures.

TrackingTarget with a run_id (the pipeline's run) -> logs into it and leaves it open (the pipeline ends it);
without one (a sweep's trial: parent_run_id set) -> starts its own run, a child of the parent, with the training's
settings as params, and ends it: FINISHED, KILLED (pruned: StopTrial) or FAILED.
"""

from __future__ import annotations

import logging
from typing import Any

from ..refs import TrackingTarget
from . import client as mlf

log = logging.getLogger(__name__)

FLUSH_EVERY = 100  # metric rows buffered between requests: a step's loss is not worth a round trip of its own


class TrackingObserver:
    """stages/observers.TrainObserver into an MLflow run (main process only). Raises TrackingUnavailable when built
    against a server that does not answer (build_observers turns that into one warning)."""

    def __init__(self, target: TrackingTarget):
        self.client = mlf.connect(target.uri)
        self.target, self.own_run, self.rows = target, target.run_id is None, []

    def on_start(self, facts: dict[str, Any]) -> None:
        tags = {"hubflow.data_fingerprint": facts.get("data_fingerprint", ""),
                "hubflow.hardware": facts.get("hardware", ""), "hubflow.processes": facts.get("processes", 1)}
        base = facts.get("base_model") or {}
        if base:
            tags.update({"hubflow.base_model": base.get("repo_id", ""), "hubflow.base_model_sha": base.get("sha", "")})
        if facts.get("resumed_at_step"):
            tags["hubflow.resumed_at_step"] = facts["resumed_at_step"]
        if self.own_run:
            params = {f"train.{k}": "" if v is None else str(v) for k, v in (facts.get("config") or {}).items()}
            params.update(task=str(facts.get("task", "")), total_steps=str(facts.get("total_steps", "")))
            self.target = mlf.open_run(self.client, self.target, params, {k: str(v) for k, v in tags.items()})
            log.info("tracking the training as MLflow run %s%s", self.target.run_id,
                     f" ({self.target.url})" if self.target.url else "")
        else:
            mlf.set_tags(self.client, self.target.run_id, tags)

    def on_step(self, step: int, loss: float, lr: float) -> None:
        self.rows += [("loss", loss, step), ("lr", lr, step)]
        if len(self.rows) >= 2 * FLUSH_EVERY:
            self._flush()

    def on_evaluate(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        self.rows += [(k, v, step) for k, v in metrics.items()] + [("epoch", epoch, step)]
        self._flush()  # an epoch's numbers show up as soon as they exist

    def on_end(self, result: dict[str, Any] | None, error: str | None) -> None:
        if self.target.run_id is None:
            return  # never started (on_start failed: switched off)
        if result:
            step = int(result.get("steps", 0))
            for key in ("samples_per_second", "peak_rss_mb", "peak_gpu_memory_mb", "train_seconds"):
                if result.get(key) is not None:
                    self.rows.append((f"system/{key}", result[key], step))
        self._flush()
        if error:
            mlf.set_tags(self.client, self.target.run_id, {"hubflow.train_error": error[:5000]})
        if self.own_run:
            stopped = bool(error and error.startswith("stopped"))
            mlf.finish(self.client, self.target.run_id, "FINISHED" if not error else "KILLED" if stopped else "FAILED")

    def _flush(self) -> None:
        if self.rows and self.target.run_id:
            rows, self.rows = self.rows, []
            mlf.log_metrics(self.client, self.target.run_id, rows)
