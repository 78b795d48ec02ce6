"""A pipeline run's MLflow run, from its start to the published model's registry version.

Each function here is guarded: a failure logs one warning (per run, per process) and returns None, so the pipeline
never waits on, or fails because of, its tracker.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, TypeVar

from ..config import PipelineConfig
from ..doors import store
from ..refs import PinnedRepo, PipelineResult, PublishedRepo, TrackingTarget
from . import flat_params, pinned_tags, target_for

log = logging.getLogger(__name__)
T = TypeVar("T")
_off: set[str] = set()  # runs (or uris, before a run exists) whose tracking failed here: said once, then skipped


def guarded(fn: Callable[..., T]) -> Callable[..., T | None]:
    """fn(target, ...) -> its result, or None with one warning when tracking fails (and silence after that)."""

    @functools.wraps(fn)
    def call(target: TrackingTarget | None, *args, **kwargs):
        if target is None:
            return None
        key = target.run_id or target.uri
        if key in _off:
            return None
        try:
            return fn(target, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking is never on the critical path
            _off.add(key)
            log.warning("MLflow tracking is off for this run: %s", str(e).splitlines()[0] if str(e) else e)
            return None

    return call


def start(config: PipelineConfig, base_model: PinnedRepo, dataset: PinnedRepo | None, flow_run_id: str | None,
          flow_run_url: str | None, flow_name: str = "pipeline") -> TrackingTarget | None:
    """Open the pipeline run's MLflow run (params: the flattened recipe; tags: the pinned shas, the kind, the Prefect
    flow run and its UI URL) -> its target, or None when tracking is off or the server does not answer."""
    try:
        target = target_for(config, run_name=f"{flow_name}-{flow_run_id[:8]}" if flow_run_id else None)
    except ValueError as e:  # no default store for a remote artifact store, credentials in $MLFLOW_TRACKING_URI
        log.warning("MLflow tracking is off for this run: %s", e)
        return None
    tags = pinned_tags(base_model, dataset, config.task)
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    if flow_run_url:
        tags["prefect.flow_run_url"] = flow_run_url
    _off.discard(target.uri if target else "")  # a new run asks again: the server may be back
    return _open(target, flat_params(config), tags)


@guarded
def _open(target: TrackingTarget, params: dict[str, str], tags: dict[str, str]) -> TrackingTarget:
    from . import client as mlf

    return mlf.open_run(mlf.connect(target.uri), target, params, tags)


@guarded
def record(target: TrackingTarget, result: PipelineResult) -> None:
    """The run's outcome: test metrics, the evaluation report and summary.json as artifacts, the trained model's
    store URI; the loss curve from the training's history when the training itself was not observed (a cached
    train stage)."""
    from . import client as mlf

    client = mlf.connect(target.uri)
    rid = target.run_id
    rows = [(f"test_{k}", v, 0) for k, v in result.evaluation.metrics.items()]
    rows += [("system/train_seconds", result.checkpoint.train_seconds, 0)]
    if not mlf.has_metric(client, rid, "loss"):
        rows += _history_rows(result.checkpoint.history_uri)
    tags = {"hubflow.model_uri": result.checkpoint.uri, "hubflow.summary_uri": result.summary_uri,
            "hubflow.hardware": result.checkpoint.hardware}
    if result.sweep is not None:  # the sweep's run: which trial won, and with what
        s = result.sweep
        tags.update({"hubflow.sweep": s.study, "hubflow.sweep_best_trial": s.best_trial,
                     "hubflow.sweep_trials": f"{s.trials} ({s.complete} complete, {s.pruned} pruned, {s.failed} "
                                             "failed)"})
        tags.update({f"hubflow.sweep_best.{k}": v for k, v in s.best_params.items()})
        rows.append((f"sweep_best_eval_{s.metric}", s.best_value, 0))
    mlf.log_metrics(client, rid, rows)
    mlf.set_tags(client, rid, tags)
    mlf.log_json(client, rid, store.read_json(result.evaluation.uri), f"evaluation/{result.evaluation.split}.json")
    mlf.log_json(client, rid, result.model_dump(mode="json"), "summary.json")


def _history_rows(history_uri: str) -> list[tuple[str, float, int]]:
    history = store.read_json(history_uri) if store.exists(history_uri) else {}
    rows = [(k, s[k], s["step"]) for s in history.get("steps", []) for k in ("loss", "lr")]
    for e in history.get("evals", []):
        rows += [(k, v, e["step"]) for k, v in e.items() if k.startswith("eval_")] + [("epoch", e["epoch"], e["step"])]
    return rows


@guarded
def register(target: TrackingTarget, result: PipelineResult) -> Any:
    """The published model as a version of the registered model named after its repo (`user--name`: MLflow names
    take no '/'), its source the Hub repo at the published sha (`hf://user/name@sha`, no copy of the weights),
    linked to the run -> the ModelVersion (None: nothing published)."""
    from . import client as mlf

    model: PublishedRepo | None = result.published.model if result.published else None
    if model is None:
        return None
    tags = {"hubflow.hub_repo": model.repo_id, "hubflow.hub_sha": model.sha, "hubflow.hub_url": model.url}
    if model.pr_url:
        tags["hubflow.hub_pr"] = model.pr_url
    client = mlf.connect(target.uri)
    version = mlf.register(client, model.repo_id.replace("/", "--"), f"hf://{model.repo_id}@{model.sha}",
                           target.run_id, tags, f"{model.url} at {model.sha}")
    mlf.set_tags(client, target.run_id, {"hubflow.registered_model": f"{version.name}/{version.version}",
                                         "hubflow.published": f"{model.repo_id}@{model.sha}"})
    return version


@guarded
def finish(target: TrackingTarget, error: str | None = None) -> None:
    """End the run: FINISHED, or FAILED with the error as a tag."""
    from . import client as mlf

    client = mlf.connect(target.uri)
    if error:
        mlf.set_tags(client, target.run_id, {"hubflow.error": error[:5000]})
    mlf.finish(client, target.run_id, "FAILED" if error else "FINISHED")


def fail_by_flow_run(config: PipelineConfig, flow_run_id: str, error: str) -> None:
    """A flow run that failed or crashed: end its MLflow run (found by its Prefect tag) as FAILED."""
    target = target_for(config)
    if target is not None:
        _fail(target, flow_run_id, error)


@guarded
def _fail(target: TrackingTarget, flow_run_id: str, error: str) -> None:
    from . import client as mlf

    client = mlf.connect(target.uri)
    run_id = mlf.find_run(client, target.experiment, "prefect.flow_run_id", flow_run_id)
    if run_id:
        finish(target.model_copy(update={"run_id": run_id}), error)
