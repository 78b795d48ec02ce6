"""The training pipeline, end to end: pin → pull → preprocess → train → predict → evaluate → publish → Space.

    hubflow run deployments/configs/demo.yaml          # any recipe, embedded Prefect
    hubflow demo --workdir ./hubflow-demo              # the offline demo (localhub + MiniLM)

Training and batch inference run here (execution.mode=local) or as gpu-pool deployments (pools); publishing and the
Space happen only when `publish.enabled` / `space.enabled`, after the promotion gate.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks import dispatch, stages, store
from tasks.config import PipelineConfig
from tasks.gate import gate
from tasks.publish import publish_model, publish_predictions
from tasks.refs import PipelineResult, PublishOutcome, SpaceDeployment
from tasks.space import deploy_space, space_inputs


@flow(name="hubflow-pipeline", persist_result=True, log_prints=True)
def pipeline(config: PipelineConfig) -> PipelineResult:
    """Fine-tune `config.model` on `config.data`, predict and evaluate the test split, then publish if promoted."""
    base_model, dataset = stages.pin_inputs(config.model, config.data)
    raw = stages.pull_dataset(config.data, dataset, config.artifact_store)
    stages.pull_model(base_model, config.model.allow_pickle_weights)
    tokenized = stages.preprocess(raw, base_model, config.preprocess, config.data, config.artifact_store)
    checkpoint = dispatch.train(tokenized, base_model, config.train, config.artifact_store, config.execution)
    predictions = dispatch.predict(checkpoint, tokenized, "test", config.inference, config.artifact_store,
                                   config.execution)
    evaluation = stages.evaluate(predictions, checkpoint, config.artifact_store)
    result = record_run(config, base_model, dataset, raw, tokenized, checkpoint, predictions, evaluation)
    if not config.publish.enabled:
        return result

    decision = gate(result, config.publish)
    if not decision.promoted:
        return record_release(result, PublishOutcome(decision=decision))
    model = publish_model(result, config.publish)
    predictions_repo = publish_predictions(result, model, config.publish)
    outcome = PublishOutcome(decision=decision, model=model, predictions=predictions_repo)
    if not config.space.enabled:
        return record_release(result, outcome)
    space = deploy_space(model, config.space, *space_inputs(result))
    return record_release(result, outcome, space)


def record_run(config, base_model, dataset, raw, tokenized, checkpoint, predictions, evaluation) -> PipelineResult:
    """Write the run's summary to the store and log the headline numbers."""
    run_id = flow_run.get_id()
    summary_uri = store.join(config.artifact_store, "runs", run_id or "local", "summary.json")
    result = PipelineResult(
        flow_run_id=run_id, flow_run_url=flow_run.get_flow_run_ui_url(), config=config, base_model=base_model,
        dataset=dataset, raw=raw, tokenized=tokenized, checkpoint=checkpoint, predictions=predictions,
        evaluation=evaluation, summary_uri=summary_uri,
    )
    store.write_json(summary_uri, result.model_dump(mode="json"))
    m = evaluation.metrics
    get_run_logger().info(
        "test accuracy %.4f, macro-F1 %.4f on %d rows; model at %s", m["accuracy"], m["macro_f1"],
        predictions.rows, checkpoint.uri,
    )
    return result


def record_release(result: PipelineResult, outcome: PublishOutcome, space: SpaceDeployment | None = None) -> PipelineResult:
    """Add what was published (or why not) and the Space to the run's summary."""
    result = result.model_copy(update={"published": outcome, "space": space})
    store.write_json(result.summary_uri, result.model_dump(mode="json"))
    get_run_logger().info("release: %s%s", outcome.decision.reason,
                          f"; Space {space.space_id} {space.stage} at {space.url}" if space else "")
    return result
