"""A sweep's trials as records: what one trial's training came to, what the study keeps of it, the sweep's table.

    outcome = TrialOutcome(number=3, params={...}, state="complete", value=0.91, seconds=42.0, checkpoint=ref)
    keep(trial, outcome)            # user attrs on the study's trial (before it is told), so a resumed sweep has them
    rows = table(study, plan.metric) # one row per trial: parameters, metric, state, duration, the best one marked
    record = sweep_record(...)       # the SweepRecord the best trial's card and summary carry
"""

from __future__ import annotations

from typing import Any, Literal

from ..refs import CheckpointRef, Ref, SweepRecord, TokenizedRef
from .pruning import PRUNED_AT
from .space import SweepConfig
from .study import INTERRUPTED, shown

CHECKPOINT, TOKENIZED, SECONDS, ERROR = "checkpoint", "tokenized", "seconds", "error"


class TrialOutcome(Ref):
    """What one trial's training came to. `failed` may still turn out `pruned`: on the gpu pool a stopped training
    is a failed run, and the pruner's note in the study says which (settle)."""

    number: int
    params: dict[str, Any]
    state: Literal["complete", "pruned", "failed"]
    value: float | None = None
    seconds: float
    checkpoint: CheckpointRef | None = None
    tokenized: TokenizedRef | None = None
    error: str | None = None


def settle(outcome: TrialOutcome, user_attrs: dict[str, Any]) -> TrialOutcome:
    """A failed trial that the pruner had stopped is pruned."""
    if outcome.state == "failed" and PRUNED_AT in user_attrs:
        return outcome.model_copy(update={"state": "pruned", "error": None})
    return outcome


def keep(trial, outcome: TrialOutcome) -> None:
    """Write what a resumed sweep needs of the trial (its model and data refs, duration, error) to the study."""
    trial.set_user_attr(SECONDS, round(outcome.seconds, 2))
    if outcome.checkpoint:
        trial.set_user_attr(CHECKPOINT, outcome.checkpoint.model_dump(mode="json"))
    if outcome.tokenized:
        trial.set_user_attr(TOKENIZED, outcome.tokenized.model_dump(mode="json"))
    if outcome.error:
        trial.set_user_attr(ERROR, outcome.error[:500])


def counted(study) -> list:
    """The study's trials but those interrupted by a killed sweep (they were run again)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(INTERRUPTED)]


def table(study, metric: str) -> list[dict[str, Any]]:
    """One row per trial: number, each parameter, the metric, state (pruned after which epoch), duration, best."""
    best = _best_number(study)
    rows = []
    for t in counted(study):
        pruned = t.user_attrs.get(PRUNED_AT)
        state = t.state.name.lower() + (f" after epoch {pruned['epoch']}" if pruned else "")
        value = t.value if t.value is not None else (pruned or {}).get("value")
        rows.append({"trial": t.number, **{k: _short(v) for k, v in t.params.items()},
                     metric: None if value is None else round(value, 4), "state": state,
                     "seconds": t.user_attrs.get(SECONDS), "best": "best" if t.number == best else "",
                     "note": t.user_attrs.get(ERROR, "")[:120] or ("re-run of trial %d" % t.user_attrs["rerun_of"]
                                                                    if "rerun_of" in t.user_attrs else "")})
    return rows


def sweep_record(study, sweep: SweepConfig, metric: str, direction: str, url: str,
                 flow_run_id: str | None) -> SweepRecord:
    """The sweep as its best trial's card tells it."""
    trials = counted(study)
    states = [t.state.name for t in trials]
    best = study.best_trial
    return SweepRecord(study=study.study_name, storage=shown(url),
                       space={k: p.describe() for k, p in sweep.params.items()}, metric=metric, direction=direction,
                       trials=len(trials), complete=states.count("COMPLETE"), pruned=states.count("PRUNED"),
                       failed=states.count("FAIL"), best_trial=best.number, best_value=float(best.value),
                       best_params=dict(best.params), flow_run_id=flow_run_id)


def _best_number(study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:  # no trial complete yet
        return None


def _short(v: Any) -> Any:
    return float(f"{v:.4g}") if isinstance(v, float) else v
