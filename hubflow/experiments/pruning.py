"""The sweep's pruner as a training observer: each epoch's validation metric goes to the trial in the study, and a
trial the pruner gives up on stops at that evaluation.

    TrialTarget (hubflow/refs.py) -> PruningObserver: on_evaluate(step, epoch, metrics) reports
    metrics[target.metric] at epoch k (1, 2, ...: comparable across trials whatever their batch size) and raises
    StopTrial when the pruner says so, after noting `pruned_at` in the trial's user attrs (what the sweep reads:
    from another machine, a failed train run says little more than that it failed).

It runs where the training runs (a gpu-pool worker), so the study's storage must be reachable from there: a journal
file on a store every worker mounts, or an RDB URL. build_observers (hubflow/stages/observers.py) makes one per
training whose ObserveSpec names a trial.
"""

from __future__ import annotations

import math
from typing import Any

from ..refs import TrialTarget

PRUNED_AT = "pruned_at"


class PruningObserver:
    """Reports a trial's per-epoch validation metric to its study; `stop` (the loop's StopTrial, handed in by
    build_observers: the library's stages import this module, not the other way round) when pruned."""

    def __init__(self, target: TrialTarget, stop: type[Exception]):
        self.target, self.stop = target, stop
        self.trial, self.last_epoch = None, None

    def _open(self):
        import optuna

        from .study import make_pruner, open_storage

        if self.trial is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            t = self.target
            study = optuna.load_study(study_name=t.study, storage=open_storage(t.storage),
                                      pruner=make_pruner(t.pruner, t.startup_trials, t.warmup_epochs))
            self.trial = optuna.trial.Trial(study, t.trial_id)
        return self.trial

    def on_start(self, facts: dict[str, Any]) -> None:
        self._open()  # a storage the worker cannot reach shows now, as one warning (the trial then runs unpruned)
        if facts.get("total_steps") and facts.get("steps_per_epoch"):
            self.last_epoch = math.ceil(facts["total_steps"] / facts["steps_per_epoch"])

    def on_step(self, step: int, loss: float, lr: float) -> None:
        pass

    def on_evaluate(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        t = self.target
        if t.metric not in metrics:
            measured = ", ".join(sorted(k.removeprefix("eval_") for k in metrics))
            raise ValueError(f"sweep.metric {t.metric.removeprefix('eval_')!r} is not measured on the validation "
                             f"split (it has: {measured}); trial {t.trial} is not pruned")
        trial, value, k = self._open(), float(metrics[t.metric]), max(1, math.ceil(epoch - 1e-6))
        trial.report(value, step=k)
        # The last evaluation is never pruned: stopping there saves nothing and would throw the finished model away.
        if (self.last_epoch is None or k < self.last_epoch) and trial.should_prune():
            trial.set_user_attr(PRUNED_AT, {"epoch": k, "step": step, "value": value})
            raise self.stop(f"trial {t.trial} pruned by the {t.pruner} pruner after epoch {k}: "
                            f"{t.metric.removeprefix('eval_')} {value:.4f}", step)

    def on_end(self, result: dict[str, Any] | None, error: str | None) -> None:
        pass
