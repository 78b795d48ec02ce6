"""The pipeline's MLflow run, from the Prefect side: opened at flow start and linked from the flow run, fed the
outcome, ended with the published model registered (hubflow/tracking; docs/experiments.md).

Plain functions, not tasks: tracking never retries, caches or fails a run (hubflow.tracking.runs is guarded).
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.runtime import flow_run

from hubflow.config import PipelineConfig
from hubflow.refs import ObserveSpec, PinnedRepo, PipelineResult, TrackingTarget
from hubflow.tracking import runs


def start(config: PipelineConfig, base_model: PinnedRepo, dataset: PinnedRepo | None) -> TrackingTarget | None:
    """Open the run's MLflow run (tracking.backend=mlflow) and link it from the flow run: a link artifact for a
    tracking server, a log line in any case -> its target, or None (tracking off, or the server does not answer:
    one warning)."""
    if not config.tracking.enabled:
        return None
    url = flow_run.get_flow_run_ui_url()
    target = runs.start(config, base_model, dataset, flow_run.get_id(),
                        url if url and url.startswith(("http://", "https://")) else None,
                        (flow_run.get_flow_name() or "hubflow").removeprefix("hubflow-"))
    if target is not None:
        get_run_logger().info("tracked in MLflow: run %s of the experiment %r at %s", target.run_id,
                              target.experiment, target.url or target.uri)
        if target.url:
            from prefect.artifacts import create_link_artifact

            create_link_artifact(target.url, link_text=f"MLflow run {target.run_id}", key="mlflow-run",
                                 description=f"This run in MLflow (experiment `{target.experiment}`)")
    return target


def observe(target: TrackingTarget | None) -> ObserveSpec | None:
    """Who watches the training: the run's tracker, when there is one."""
    return ObserveSpec(tracking=target) if target is not None else None


def record(target: TrackingTarget | None, result: PipelineResult) -> None:
    """The test metrics, evaluation report and summary into the MLflow run."""
    runs.record(target, result)


def finish(target: TrackingTarget | None, result: PipelineResult) -> PipelineResult:
    """Register the published model (if any) as a version pointing at its Hub repo and sha, end the MLflow run
    -> `result`, unchanged."""
    runs.register(target, result)
    runs.finish(target)
    return result


def end_failed_run(flow, run, state) -> None:
    """Prefect on_failure / on_crashed hook: the failed flow run's MLflow run ends FAILED (found by its tag)."""
    try:
        config = PipelineConfig.model_validate(run.parameters["config"])
    except Exception:  # noqa: BLE001 - a run refused before it started has no MLflow run either
        return
    if config.tracking.enabled:
        runs.fail_by_flow_run(config, str(run.id), state.message or state.name)
