"""The one door to MLflow (the `tracking` extra): a client that answers fast or not at all, and the few calls
hubflow makes through it. Every other tracking module goes through here; nothing else imports mlflow.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..refs import TrackingTarget

log = logging.getLogger(__name__)

# MLflow's HTTP client retries a refused connection for minutes by default (7 tries, backoff 2): a tracking server
# that is down would hold the training up. Ours are set before the first request unless the operator set them.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

MAX_BATCH = 1000  # metrics per log_batch request (MLflow's limit)


class TrackingUnavailable(RuntimeError):
    """Tracking cannot start: the extra is missing or the server does not answer (one line, said once)."""


def connect(uri: str, timeout: float = 3.0):
    """MlflowClient for `uri` (tracking and registry), once a tracking server accepts a connection within
    `timeout` seconds -> MlflowClient. Raises TrackingUnavailable (one line) otherwise."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise TrackingUnavailable("tracking.backend=mlflow needs the tracking extra: "
                                  "pip install 'hubflow[tracking]'") from None
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError as e:
            raise TrackingUnavailable(f"the MLflow tracking server at {uri} does not answer "
                                      f"({e.strerror or e}); the run goes on untracked") from None
    elif parsed.scheme == "sqlite":
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client, target: TrackingTarget) -> str:
    """The id of the target's experiment, created on first use (a local SQLite store keeps its artifacts beside it,
    in `<folder>/artifacts`, never relative to the working directory)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(target.experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if target.uri.startswith("sqlite:///"):
        location = Path(target.uri.removeprefix("sqlite:///")).parent.joinpath("artifacts").as_uri()
    try:
        return client.create_experiment(target.experiment, artifact_location=location)
    except MlflowException:  # created meanwhile by another worker (two trials starting together)
        return client.get_experiment_by_name(target.experiment).experiment_id


def open_run(client, target: TrackingTarget, params: dict[str, str], tags: dict[str, str]) -> TrackingTarget:
    """Start a run in the target's experiment (a child of `parent_run_id` when given) with these params and tags
    -> the target naming the run (run_id, and url for a tracking server)."""
    from mlflow.entities import Param

    exp = experiment_id(client, target)
    all_tags = {**target.tags, **tags}
    if target.parent_run_id:
        all_tags["mlflow.parentRunId"] = target.parent_run_id
    run = client.create_run(exp, run_name=target.run_name, tags=all_tags)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per request
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    url = None
    if urlparse(target.uri).scheme in ("http", "https"):
        url = f"{target.uri.rstrip('/')}/#/experiments/{exp}/runs/{run.info.run_id}"
    return target.model_copy(update={"run_id": run.info.run_id, "url": url})


def log_metrics(client, run_id: str, rows: list[tuple[str, float, int]]) -> None:
    """(name, value, step) rows -> the run's metric histories, MAX_BATCH per request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(step)) for k, v, step in rows]
    for i in range(0, len(metrics), MAX_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + MAX_BATCH])


def set_tags(client, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_json(client, run_id: str, obj: Any, path: str) -> None:
    client.log_dict(run_id, obj, path)


def log_text(client, run_id: str, text: str, path: str) -> None:
    client.log_text(run_id, text, path)


def has_metric(client, run_id: str, key: str) -> bool:
    return key in client.get_run(run_id).data.metrics


def finish(client, run_id: str, status: str = "FINISHED") -> None:
    """End the run: FINISHED, FAILED or KILLED."""
    client.set_terminated(run_id, status)


def find_run(client, experiment: str, tag: str, value: str) -> str | None:
    """The id of a RUNNING run in `experiment` whose tag `tag` is `value`, if any."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], max_results=1,
                              filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'")
    return runs[0].info.run_id if runs else None


def register(client, name: str, source: str, run_id: str, tags: dict[str, str], description: str):
    """A version of registered model `name` whose source is `source` (the Hub repo at its sha: hf://...), linked
    to the run -> the ModelVersion. The registered model is created on first use; a source already registered (a
    rerun that found the Hub repo unchanged) is that version, not a new one."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"hubflow.hub_repo": tags.get("hubflow.hub_repo", "")})
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for known in client.search_model_versions(f"name = '{name}'"):
        if known.source == source:
            return known
    return client.create_model_version(name, source, run_id=run_id, tags=tags, description=description)
