"""Who watches a training as it runs: the observer contract between the training loop and its watchers.

The loop (stages/train.py, the main process only) calls, in order:

    on_start(facts)                       once: {"config", "base_model", "data_fingerprint", "total_steps", ...}
    on_step(step, loss, lr)               each optimizer step, as the loop reads the losses back (in bursts)
    on_evaluate(step, epoch, metrics)     each epoch's validation ({"eval_loss": ..., "eval_macro_f1": ...});
                                          may raise StopTrial (a pruned sweep trial)
    on_end(result, error)                 once: result = the run's figures, or error = why it stopped

Watchers are an experiment tracker (hubflow/tracking: MLflow) and a sweep's pruner (flows/sweep.py's trial). Which
ones a training gets is said by an ObserveSpec (hubflow/refs.py), which travels with the train call through every
hop (dispatch -> the gpu pool's train flow -> train_model -> torchrun's ranks) as JSON. A watcher is never on the
critical path: `Observers` turns a watcher's failure into one warning and carries on without it; only StopTrial
reaches the loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..refs import ObserveSpec

log = logging.getLogger(__name__)


class StopTrial(Exception):
    """Raised by an observer's on_evaluate to stop the training now (a pruned sweep trial). The loop calls
    on_end(None, str(exc)) and lets it propagate: no checkpoint is written."""

    def __init__(self, message: str = "stopped by an observer", step: int | None = None):
        super().__init__(message)
        self.step = step


@runtime_checkable
class TrainObserver(Protocol):
    def on_start(self, facts: dict[str, Any]) -> None: ...

    def on_step(self, step: int, loss: float, lr: float) -> None: ...

    def on_evaluate(self, step: int, epoch: float, metrics: dict[str, float]) -> None: ...

    def on_end(self, result: dict[str, Any] | None, error: str | None) -> None: ...


class Observers:
    """Many observers as one: each call goes to every observer still alive. An observer that raises anything but
    StopTrial is dropped with one warning (its failure never fails the training); StopTrial passes through."""

    def __init__(self, observers: list[TrainObserver] | None = None):
        self.observers = list(observers or [])

    def __bool__(self) -> bool:
        return bool(self.observers)

    def _call(self, method: str, *args) -> None:
        for obs in list(self.observers):
            try:
                getattr(obs, method)(*args)
            except StopTrial:
                raise
            except Exception as exc:  # noqa: BLE001 - a watcher's failure is its own, never the training's
                log.warning("%s failed in %s and is switched off for this run: %s", type(obs).__name__, method, exc)
                self.observers.remove(obs)

    def on_start(self, facts: dict[str, Any]) -> None:
        self._call("on_start", facts)

    def on_step(self, step: int, loss: float, lr: float) -> None:
        self._call("on_step", step, loss, lr)

    def on_evaluate(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        self._call("on_evaluate", step, epoch, metrics)

    def on_end(self, result: dict[str, Any] | None, error: str | None) -> None:
        self._call("on_end", result, error)


def build_observers(spec: "ObserveSpec | None") -> Observers:
    """ObserveSpec -> the observers it names (none for None). Call it in the main process only (rank 0)."""
    found: list[TrainObserver] = []
    if spec is None:
        return Observers(found)
    if spec.tracking is not None:
        try:
            from ..tracking import TrackingObserver

            found.append(TrackingObserver(spec.tracking))
        except Exception as exc:  # noqa: BLE001 - no tracker (extra missing, server down) never stops a training
            log.warning("training is not tracked: %s", exc)
    trial = getattr(spec, "trial", None)
    if trial is not None:
        found.extend(_trial_observers(trial))
    return Observers(found)


def _trial_observers(trial) -> list[TrainObserver]:
    """The sweep's pruner for this trial (hubflow/experiments/pruning.py: reports each epoch, StopTrial when pruned)."""
    from ..experiments.pruning import PruningObserver

    return [PruningObserver(trial, StopTrial)]
