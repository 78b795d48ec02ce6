"""Record what a pipeline run produced: its summary in the store (what `hubflow-publish` reads) and the log line."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from hubflow.config import PipelineConfig
from hubflow.doors import store
from hubflow.refs import (
    CheckpointRef,
    EvalRef,
    PinnedRepo,
    PipelineResult,
    PredictionsRef,
    PublishOutcome,
    RawDataRef,
    SpaceDeployment,
    SweepRecord,
    TokenizedRef,
    TrackingTarget,
)


@task(name="record-run")
def record_run(config: PipelineConfig, base_model: PinnedRepo, dataset: PinnedRepo | None, raw: RawDataRef,
               tokenized: TokenizedRef, checkpoint: CheckpointRef, predictions: PredictionsRef,
               evaluation: EvalRef, sweep: SweepRecord | None = None,
               tracking: TrackingTarget | None = None) -> PipelineResult:
    """Write the run's summary to the store and log the headline numbers (`sweep`: the sweep whose best trial
    this is; `tracking`: the run's MLflow run)."""
    run_id = flow_run.get_id()
    summary_uri = store.join(config.artifact_store, "runs", run_id or "local", "summary.json")
    url = flow_run.get_flow_run_ui_url()
    result = PipelineResult(
        # Without a UI URL configured (the default for `hubflow run` and the demo) Prefect answers "None/flow-runs/…":
        # no link then, the card names the run id plainly.
        flow_run_id=run_id, flow_run_url=url if url and url.startswith(("http://", "https://")) else None,
        config=config, base_model=base_model,
        dataset=dataset, raw=raw, tokenized=tokenized, checkpoint=checkpoint, predictions=predictions,
        evaluation=evaluation, summary_uri=summary_uri, sweep=sweep, tracking=tracking,
    )
    store.write_json(summary_uri, result.model_dump(mode="json"))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in evaluation.metrics.items() if not k.endswith("_rows"))
    get_run_logger().info("test %s on %d rows; model at %s", shown, predictions.rows, checkpoint.uri)
    return result


@task(name="record-release")
def record_release(result: PipelineResult, outcome: PublishOutcome, space: SpaceDeployment | None = None,
                   endpoint: SpaceDeployment | None = None) -> PipelineResult:
    """Add what was published (or why not), the Space and the endpoint (the API Space) to the run's summary."""
    result = result.model_copy(update={"published": outcome, "space": space, "endpoint": endpoint})
    store.write_json(result.summary_uri, result.model_dump(mode="json"))
    get_run_logger().info("release: %s%s%s", outcome.decision.reason,
                          f"; Space {space.space_id} {space.stage} at {space.url}" if space else "",
                          f"; endpoint {endpoint.space_id} {endpoint.stage} at {endpoint.url}" if endpoint else "")
    return result
