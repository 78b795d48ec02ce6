"""The training pipeline, end to end: pin → pull → preprocess → train → predict → evaluate.

    hubflow run deployments/configs/demo.yaml          # any recipe, embedded Prefect
    hubflow demo --workdir ./hubflow-demo              # the offline demo (localhub + MiniLM)
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks import dispatch, stages, store
from tasks.config import PipelineConfig
from tasks.refs import PipelineResult


@flow(name="hubflow-pipeline", persist_result=True, log_prints=True)
def pipeline(config: PipelineConfig) -> PipelineResult:
    """Fine-tune `config.model` on `config.data`, predict the test split and evaluate it."""
    base_model, dataset = stages.pin_inputs(config.model, config.data)
    raw = stages.pull_dataset(config.data, dataset, config.artifact_store)
    stages.pull_model(base_model, config.model.allow_pickle_weights)
    tokenized = stages.preprocess(raw, base_model, config.preprocess, config.data, config.artifact_store)
    checkpoint = dispatch.train(tokenized, base_model, config.train, config.artifact_store, config.execution)
    predictions = dispatch.predict(checkpoint, tokenized, "test", config.inference, config.artifact_store,
                                   config.execution)
    evaluation = stages.evaluate(predictions, checkpoint, config.artifact_store)
    return record_run(config, base_model, dataset, raw, tokenized, checkpoint, predictions, evaluation)


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
