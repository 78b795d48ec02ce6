"""Experiment tracking: every pipeline run (and every sweep trial) as an MLflow run; docs/experiments.md.

    target_for(config, ...)  the recipe's `tracking:` section -> where to log (TrackingTarget), or None; no I/O
    runs.start(...)          open the pipeline's run: the flattened recipe as params, the pinned shas and the
                             Prefect run (id, UI URL) as tags -> the target with its run id (None: not tracked)
    TrackingObserver         a training observer (stages/observers.py): per-step loss and lr, per-epoch metrics,
                             throughput and peak memory, into the target's run (a sweep trial: a child run)
    runs.record / register / finish    the final report and summary; the published model as a registry version
                             whose source is the Hub repo at its sha (no copy of the weights); the run's end

mlflow is imported by `client.py` alone, behind the `tracking` extra. Tracking is never on the critical path: a
missing extra or an unreachable server is one warning and the run goes on untracked; a failure mid-run switches
tracking off for the rest of that process, with one warning.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import PipelineConfig, TrackingConfig, check_tracking_uri
from ..doors import store
from ..refs import PinnedRepo, TrackingTarget

SECRET = re.compile(r"(^|_)(token|secret|password|api_key)$", re.I)  # a setting named like one is never logged


def target_for(config: PipelineConfig, run_name: str | None = None, tags: dict[str, str] | None = None
               ) -> TrackingTarget | None:
    """The run's tracking target (uri, experiment) from its recipe, or None when `tracking.backend` is none."""
    cfg: TrackingConfig = config.tracking
    if not cfg.enabled:
        return None
    return TrackingTarget(uri=tracking_uri(cfg, config.artifact_store), experiment=experiment_name(config),
                          run_name=run_name, tags=dict(tags or {}))


def tracking_uri(cfg: TrackingConfig, artifact_store: str) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else `sqlite:///<artifact store>/mlruns/mlflow.db` for a local store
    (an absolute path: the same store whatever the worker's working directory). MLflow 3 refuses plain-folder
    stores, so the local default is a SQLite file in that folder; artifacts go to `mlruns/artifacts` beside it."""
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
    if not store.is_local(artifact_store):
        raise ValueError(f"tracking.uri: no default for a remote artifact_store ({artifact_store}); name a tracking "
                         "server (http://host:5000) or set $MLFLOW_TRACKING_URI")
    return f"sqlite:///{local_root(artifact_store) / 'mlflow.db'}"


def local_root(artifact_store: str) -> Path:
    """The default local tracking folder: `<artifact store>/mlruns`, absolute."""
    return Path(artifact_store.removeprefix("file://")).expanduser().resolve() / "mlruns"


def experiment_name(config: PipelineConfig) -> str:
    """tracking.experiment, else the publish target's repo id, else `<base model name>-<dataset name>` (the name a
    publish would give the model repo)."""
    if config.tracking.experiment:
        return config.tracking.experiment
    if config.publish.repo_id:
        return config.publish.repo_id
    last = [part.rstrip("/").split("/")[-1] for part in (config.model.repo_id, config.data.source)]
    return re.sub(r"[^\w.-]+", "-", "-".join(last)).strip("-.") or "hubflow"


def flat_params(config: PipelineConfig) -> dict[str, str]:
    """The recipe as MLflow params: `train.learning_rate` -> '5e-05'; None as ''; no secret-named settings."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif not SECRET.search(prefix.rsplit(".", 1)[-1]):
            out[prefix] = "" if value is None else str(value)[:6000]  # MLflow's limit on a param value

    walk("", config.model_dump(mode="json"))
    return out


def pinned_tags(base_model: PinnedRepo, dataset: PinnedRepo | None, task: str) -> dict[str, str]:
    """What a run was pinned to, as tags: the model and dataset at their shas, and the task kind."""
    tags = {"hubflow.task": task, "hubflow.base_model": base_model.repo_id,
            "hubflow.base_model_sha": base_model.sha}
    if dataset is not None:
        tags.update({"hubflow.dataset": dataset.repo_id, "hubflow.dataset_sha": dataset.sha})
    return tags


def __getattr__(name: str):
    # The observer needs mlflow; importing hubflow.tracking does not.
    if name == "TrackingObserver":
        from .observer import TrackingObserver

        return TrackingObserver
    raise AttributeError(name)
