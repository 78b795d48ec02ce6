"""A sweep's trials: Optuna asks, the pipeline's train stage answers, `parallelism` trainings at a time.

    best = run_trials(config, base_model, dataset, tokenized, sweep, plan)   # inside the sweep flow

Each trial is a task run (`trial-N`): the trial's parameters written into the config, its own pull and preprocess
when the space touches data (cached tasks: a value seen before costs nothing), then `dispatch.train` (here, or a run
of the gpu pool's train deployment) with the trial's pruner observing each epoch. The sweep's process asks the study
for the next parameters as soon as a trial finishes, so TPE learns from every finished trial, and tells it the
result. The study lives in durable storage (hubflow/experiments/study.py): a rerun of a killed sweep keeps its
finished trials and runs the rest.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run

from hubflow.config import ExecutionMode, PipelineConfig, one_line
from hubflow.experiments.space import Plan, SweepConfig, SweepError, apply_params
from hubflow.experiments.study import distributions, finished, open_study, shown, storage_url
from hubflow.experiments.trials import CHECKPOINT, TOKENIZED, TrialOutcome, keep, settle, sweep_record, table
from hubflow.refs import CheckpointRef, ObserveSpec, PinnedRepo, SweepRecord, TokenizedRef, TrackingTarget, TrialTarget
from hubflow.stages.observers import StopTrial
from hubflow.tasks import dispatch
from hubflow.tasks import pipeline as stages


class Best(NamedTuple):
    """The sweep's best trial: its parameters, model, data (None: the shared tokenization) and the sweep's record."""

    params: dict[str, Any]
    checkpoint: CheckpointRef
    tokenized: TokenizedRef | None
    record: SweepRecord


@task(name="sweep-trial", cache_policy=NO_CACHE)
def run_trial(config: PipelineConfig, params: dict[str, Any], base_model: PinnedRepo, dataset: PinnedRepo | None,
              tokenized: TokenizedRef | None, observe: ObserveSpec) -> TrialOutcome:
    """One trial: the config with `params`, [its own data], the train stage; pruned or failed is an outcome."""
    started, number = time.monotonic(), observe.trial.trial
    cfg, own = apply_params(config, params), None
    try:
        if tokenized is None:  # the space changes the data: this trial's pull and preprocess (cached per value)
            raw = stages.pull_dataset(cfg.data, dataset, cfg.task, cfg.artifact_store)
            stages.pull_model(base_model, cfg.model.allow_pickle_weights)
            tokenized = own = stages.preprocess(raw, base_model, cfg.preprocess, cfg.data, cfg.task,
                                                cfg.artifact_store)
        checkpoint = dispatch.train(tokenized, base_model, cfg.train, cfg.artifact_store, cfg.execution,
                                    cfg.model.allow_pickle_weights, observe=observe)
    except StopTrial as stop:  # this process's training: the pruner stopped it
        print(stop)
        return TrialOutcome(number=number, params=params, state="pruned", seconds=time.monotonic() - started)
    except Exception as e:  # noqa: BLE001 - one trial failing (a diverged run, a lost worker) is the study's news
        return TrialOutcome(number=number, params=params, state="failed", seconds=time.monotonic() - started,
                            error=one_line(e))
    value = checkpoint.metrics.get(observe.trial.metric)
    if value is None:
        return TrialOutcome(number=number, params=params, state="failed", seconds=time.monotonic() - started,
                            error=f"the validation has no {observe.trial.metric}")
    return TrialOutcome(number=number, params=params, state="complete", value=value, checkpoint=checkpoint,
                        tokenized=own, seconds=time.monotonic() - started)


def run_trials(config: PipelineConfig, base_model: PinnedRepo, dataset: PinnedRepo | None,
               tokenized: TokenizedRef | None, sweep: SweepConfig, plan: Plan,
               tracking: TrackingTarget | None = None) -> Best:
    """Run the study's missing trials, `parallelism` at a time; a table artifact of every trial; the best one."""
    import optuna

    parallelism = sweep.parallelism or (1 if config.execution.mode is ExecutionMode.local
                                        else dispatch._online_capacity(config.execution.train_deployment))
    url = storage_url(sweep.storage, config.artifact_store, plan.study)
    recipe = {key: _value(config, key) for key in sweep.params} if sweep.start_from_recipe else {}
    study = open_study(url, plan.study, plan.direction.value, sweep, parallelism,
                       {k: v for k, v in recipe.items() if sweep.params[k].holds(v)})
    todo = sweep.trials - len(finished(study))
    print(f"sweep {plan.study}: {sweep.trials} trials ({sweep.trials - todo} finished before), {parallelism} at a "
          f"time, {sweep.pruner.value} pruning, study in {shown(url)}")
    space, running = distributions(sweep.params), {}
    while todo > 0 or running:
        while todo > 0 and len(running) < parallelism:
            trial, todo = study.ask(space), todo - 1
            target = TrialTarget(storage=url, study=plan.study, trial=trial.number, trial_id=trial._trial_id,
                                 metric=f"eval_{plan.metric}", direction=plan.direction.value,
                                 pruner=sweep.pruner.value, startup_trials=sweep.startup_trials,
                                 warmup_epochs=sweep.warmup_epochs)
            observe = ObserveSpec(trial=target, tracking=_child(tracking, plan.study, trial.number))
            future = run_trial.with_options(task_run_name=f"trial-{trial.number}").submit(
                config, trial.params, base_model, dataset, tokenized, observe)
            running[future] = trial
        future = next(as_completed(list(running)))
        trial = running.pop(future)
        outcome = settle(future.result(), study._storage.get_trial(trial._trial_id).user_attrs)
        keep(trial, outcome)
        state = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
                 "failed": optuna.trial.TrialState.FAIL}[outcome.state]
        study.tell(trial, outcome.value if outcome.state == "complete" else None, state=state)
        shown_value = f" {plan.metric} {outcome.value:.4f}" if outcome.value is not None else ""
        print(f"trial {trial.number} {outcome.state}{shown_value} in {outcome.seconds:.1f} s: {trial.params}"
              + (f" ({outcome.error})" if outcome.error else ""))
    return _best(study, sweep, plan, url)


def _best(study, sweep: SweepConfig, plan: Plan, url: str) -> Best:
    rows = table(study, plan.metric)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        create_table_artifact(key="sweep", table=rows, description=f"Sweep {plan.study}: no trial completed")
        errors = [r["note"] for r in rows if r["note"]]
        raise SweepError(f"sweep {plan.study}: none of {len(rows)} trials completed"
                         + (f" (first error: {errors[0]})" if errors else ""))
    record = sweep_record(study, sweep, plan.metric, plan.direction.value, url, flow_run.get_id())
    best = study.best_trial
    create_table_artifact(key="sweep", table=rows, description=(
        f"Sweep {plan.study}: {record.trials} trials ({record.complete} complete, {record.pruned} pruned, "
        f"{record.failed} failed); best trial {best.number}, validation {plan.metric} {best.value:.4f}"))
    print(f"best trial {best.number}: {plan.metric} {best.value:.4f} with {best.params}")
    tokenized = best.user_attrs.get(TOKENIZED)
    return Best(params=dict(best.params), checkpoint=CheckpointRef.model_validate(best.user_attrs[CHECKPOINT]),
                tokenized=TokenizedRef.model_validate(tokenized) if tokenized else None, record=record)


def _value(config: PipelineConfig, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return getattr(node, "value", node)


def _child(tracking: TrackingTarget | None, study: str, number: int) -> TrackingTarget | None:
    """The trial's run under the sweep's parent run (when tracked)."""
    if tracking is None:
        return None
    return tracking.model_copy(update={"parent_run_id": tracking.run_id or tracking.parent_run_id, "run_id": None,
                                       "run_name": f"{study}-trial-{number}"})
