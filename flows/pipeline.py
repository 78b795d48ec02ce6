"""The training pipeline, end to end: pin -> pull -> preprocess -> train -> predict -> evaluate -> release.

    hubflow run deployments/configs/demo.yaml          # any recipe, embedded Prefect
    hubflow demo --workdir ./hubflow-demo              # the offline demo (localhub + MiniLM)

Training and batch inference run here (execution.mode=local) or as gpu-pool deployments (pools); the release (gate,
model, predictions, Space: flows/release.py) happens only when `publish.enabled`.
"""

from __future__ import annotations

from prefect import flow

from hubflow.flows.release import release
from hubflow.kinds import config_form
from hubflow.refs import PipelineResult
from hubflow.tasks import dispatch
from hubflow.tasks import pipeline as stages
from hubflow.tasks.records import record_run
from hubflow.tasks.release import check_release_targets

# The run form: one typed form per installed task kind, picked by `task` (each kind's own sections and keys).
PipelineConfig = config_form()


@flow(name="hubflow-pipeline", persist_result=True, log_prints=True)
def pipeline(config: PipelineConfig) -> PipelineResult:
    """Fine-tune `config.model` on `config.data`, predict and evaluate the test split, then release if promoted."""
    base_model, dataset = stages.pin_inputs(config.model, config.data)
    if config.publish.enabled:  # every release target is checked before anything costs
        check_release_targets(config.model.repo_id, config.data.source, config.publish, config.space)
    raw = stages.pull_dataset(config.data, dataset, config.task, config.artifact_store)
    stages.pull_model(base_model, config.model.allow_pickle_weights)
    tokenized = stages.preprocess(raw, base_model, config.preprocess, config.data, config.task, config.artifact_store)
    checkpoint = dispatch.train(tokenized, base_model, config.train, config.artifact_store, config.execution,
                                config.model.allow_pickle_weights)
    predictions = dispatch.predict(checkpoint, tokenized, "test", config.inference, config.artifact_store,
                                   config.execution)
    evaluation = stages.evaluate(predictions, checkpoint, config.artifact_store)
    result = record_run(config, base_model, dataset, raw, tokenized, checkpoint, predictions, evaluation)
    if not config.publish.enabled:
        return result
    return release(result, config.publish, config.space)
