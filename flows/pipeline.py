"""The training pipeline, end to end: pin -> pull -> preprocess -> train -> predict -> evaluate -> release.

    hubflow run deployments/configs/demo.yaml          # any recipe, embedded Prefect
    hubflow demo --workdir ./hubflow-demo              # the offline demo (localhub + MiniLM)

Training and batch inference run here (execution.mode=local) or as gpu-pool deployments (pools); the release (gate,
model, predictions, Space: flows/release.py) happens only when `publish.enabled`.
"""

from __future__ import annotations

from typing import NamedTuple

from prefect import flow

from hubflow.flows.release import release
from hubflow.kinds import config_form
from hubflow.refs import (
    CheckpointRef,
    PinnedRepo,
    PipelineResult,
    RawDataRef,
    SweepRecord,
    TokenizedRef,
    TrackingTarget,
)
from hubflow.tasks import dispatch, tracking
from hubflow.tasks import pipeline as stages
from hubflow.tasks.records import record_run
from hubflow.tasks.release import check_release_targets

# The run form: one typed form per installed task kind, picked by `task` (each kind's own sections and keys).
PipelineConfig = config_form()


@flow(name="hubflow-pipeline", persist_result=True, log_prints=True,
      on_failure=[tracking.end_failed_run], on_crashed=[tracking.end_failed_run])
def pipeline(config: PipelineConfig) -> PipelineResult:
    """Fine-tune `config.model` on `config.data`, predict and evaluate the test split, then release if promoted."""
    inputs = prepare(config)
    tracked = tracking.start(config, inputs.base_model, inputs.dataset)  # its MLflow run (None: off or unreachable)
    checkpoint = dispatch.train(inputs.tokenized, inputs.base_model, config.train, config.artifact_store,
                                config.execution, config.model.allow_pickle_weights, observe=tracking.observe(tracked))
    return finish(config, inputs, checkpoint, tracked=tracked)


class Inputs(NamedTuple):
    """What training starts from: the pinned model and dataset, the raw and the tokenized splits."""

    base_model: PinnedRepo
    dataset: PinnedRepo | None
    raw: RawDataRef | None
    tokenized: TokenizedRef | None


def prepare(config: PipelineConfig, data: bool = True) -> Inputs:
    """pin -> [release preflight] -> pull model; with `data`, pull the dataset and preprocess it (a sweep whose
    trials change the data does those per trial: prepare_data)."""
    base_model, dataset = stages.pin_inputs(config.model, config.data)
    if config.publish.enabled:  # every release target is checked before anything costs
        check_release_targets(config.model.repo_id, config.data.source, config.publish, config.space,
                              config.endpoint)
    inputs = Inputs(base_model, dataset, None, None)
    return prepare_data(config, inputs) if data else inputs


def prepare_data(config: PipelineConfig, inputs: Inputs) -> Inputs:
    """pull-dataset -> pull-model -> preprocess (cached tasks: a config seen before costs nothing)."""
    raw = stages.pull_dataset(config.data, inputs.dataset, config.task, config.artifact_store)
    stages.pull_model(inputs.base_model, config.model.allow_pickle_weights)
    tokenized = stages.preprocess(raw, inputs.base_model, config.preprocess, config.data, config.task,
                                  config.artifact_store)
    return inputs._replace(raw=raw, tokenized=tokenized)


def finish(config: PipelineConfig, inputs: Inputs, checkpoint: CheckpointRef,
           sweep: SweepRecord | None = None, tracked: TrackingTarget | None = None) -> PipelineResult:
    """A trained model -> predict -> evaluate -> the run's record -> the release, if publishing (the pipeline's
    tail, which a sweep's best trial goes through too); `tracked`: the MLflow run that records it, registers the
    published model and ends."""
    predictions = dispatch.predict(checkpoint, inputs.tokenized, "test", config.inference, config.artifact_store,
                                   config.execution)
    evaluation = stages.evaluate(predictions, checkpoint, config.artifact_store)
    result = record_run(config, inputs.base_model, inputs.dataset, inputs.raw, inputs.tokenized, checkpoint,
                        predictions, evaluation, sweep=sweep, tracking=tracked)
    tracking.record(tracked, result)
    if config.publish.enabled:
        result = release(result, config.publish, config.space)
    return tracking.finish(tracked, result)
