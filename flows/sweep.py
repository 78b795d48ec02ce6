"""The hyper-parameter sweep: the pipeline with its train stage tried `sweep.trials` times, the best trial released.

    hubflow sweep deployments/configs/demo-sweep.yaml [--set sweep.trials=4 ...]

pin -> pull -> preprocess once (per trial only when the space changes data or preprocessing) -> trials, `parallelism`
at a time, each the pipeline's train stage (here, or a run of the gpu pool's train deployment), pruned per epoch ->
the best trial by its validation metric -> predict -> evaluate -> record -> release, as a single run
(flows/pipeline.py's tail). The study lives in durable storage: rerun a killed sweep and it keeps its finished trials.
With tracking on, the sweep is an MLflow run and each trial a child run of it (docs/experiments.md).
"""

from __future__ import annotations

from prefect import flow

from hubflow.experiments.space import SweepConfig, apply_params, check_sweep
from hubflow.flows.pipeline import PipelineConfig, finish, prepare, prepare_data
from hubflow.refs import PipelineResult
from hubflow.tasks import tracking
from hubflow.tasks.sweep import run_trials


@flow(name="hubflow-sweep", persist_result=True, log_prints=True,
      on_failure=[tracking.end_failed_run], on_crashed=[tracking.end_failed_run])
def sweep_flow(config: PipelineConfig, sweep: SweepConfig) -> PipelineResult:
    """Search `sweep.space` over the recipe `config`; predict, evaluate and release the best trial's model."""
    plan = check_sweep(config, sweep)  # a space key that is not a recipe field fails here, before anything runs
    inputs = prepare(config, data=plan.shared_data)
    tracked = tracking.start(config, inputs.base_model, inputs.dataset)  # the parent of the trials' runs
    best = run_trials(config, inputs.base_model, inputs.dataset, inputs.tokenized, sweep, plan, tracking=tracked)
    config = apply_params(config, best.params)
    inputs = inputs if plan.shared_data else prepare_data(config, inputs)  # the best trial's own (cached) data
    return finish(config, inputs, best.checkpoint, sweep=best.record, tracked=tracked)
