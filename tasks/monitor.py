"""The monitor flow's Prefect tasks: pin what is compared, assess the batch, record the report, emit the alarms.

The statistics and the kinds' monitors are plain library code (hubflow/monitor, hubflow/kinds/*/monitor.py); these
tasks add the Hub and store doors, the report artifact and the events the retrain automation listens to.
"""

from __future__ import annotations

import base64
import time
import uuid

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from hubflow.doors import hub, store
from hubflow.monitor.assess import MonitorReport, Rows, assess
from hubflow.monitor.lineage import Reference, reference_of, rows_of
from hubflow.monitor.settings import MonitorConfig
from hubflow.refs import BatchResult, PinnedRepo, Ref, TrackingTarget
from hubflow.tasks.common import NETWORK_RETRIES

_EVENT_NS = uuid.uuid5(uuid.NAMESPACE_URL, "hubflow:model-alarm")


class MonitorInputs(Ref):
    """What one monitor run compares: the model at its sha, its reference, and the batch's rows (where, which)."""

    model: PinnedRepo
    reference: Reference
    batch_dataset: PinnedRepo | None  # a Hub batch, pinned; None for files in the store or a local folder
    batch_source: str
    split: str


def _is_hub(source: str) -> bool:
    return "://" not in source and not source.startswith(("/", ".", "~"))


@task(name="pin-monitor-inputs", **NETWORK_RETRIES)
def pin_monitor_inputs(cfg: MonitorConfig) -> MonitorInputs:
    """The model (the batch run's, or model_repo_id@model_revision) and the batch pinned to shas; the reference
    from the model card's lineage."""
    b = cfg.batch
    if b.source.endswith("summary.json"):  # a batch inference run: the model and rows it used, at their shas
        run = BatchResult.model_validate(store.read_json(b.source))
        if cfg.model_repo_id not in (None, run.model.repo_id):
            raise ValueError(f"batch {b.source} was predicted by {run.model.repo_id}, not {cfg.model_repo_id}")
        model, dataset, source, split = run.model, run.dataset, run.source, run.split
    else:
        if not cfg.model_repo_id:
            raise ValueError("model_repo_id is required unless the batch is a batch inference run's summary.json")
        model = hub.pin(cfg.model_repo_id, "model", cfg.model_revision, "model")
        dataset = hub.pin(b.source, "dataset", b.revision, "batch") if _is_hub(b.source) else None
        source, split = b.source, b.split
    return MonitorInputs(model=model, reference=reference_of(model), batch_dataset=dataset, batch_source=source,
                         split=split)


def _rows(dataset: PinnedRepo | None, source: str, split: str, text: str, label: str | None,
          window: int | None, since: float | None = None) -> Rows:
    if dataset is None:
        from hubflow.stages.pull import load_files_split

        ds = load_files_split(source, split, setting="batch.split")
    else:
        splits = hub.load_dataset_at(dataset, None)
        if split not in splits:
            raise ValueError(f"split {split!r} not in {dataset.repo_id}@{dataset.sha[:10]}; splits: {sorted(splits)}")
        ds = splits[split]
    return rows_of(ds, text, label, window, since)


@task(name="assess-batch", **NETWORK_RETRIES)
def assess_batch(inputs: MonitorInputs, cfg: MonitorConfig) -> MonitorReport:
    """Load the reference and the batch rows, observe both with the model, score every signal of its kind."""
    from hubflow.kinds import kind_for
    from hubflow.stages.facts import read_facts

    model_dir = hub.model_dir(inputs.model)
    facts = read_facts(model_dir)
    monitor = kind_for(facts.task).monitor
    if monitor is None:
        raise ValueError(f"the {facts.task} kind has no monitor role (hubflow/kinds/<kind>/monitor.py)")
    b = cfg.batch
    ref = _rows(inputs.reference.dataset, inputs.reference.dataset.repo_id, inputs.reference.split, b.text_column,
                None, None)
    since = time.time() - b.since_hours * 3600 if b.since_hours else None
    batch = _rows(inputs.batch_dataset, inputs.batch_source, inputs.split, b.text_column, b.label_column, b.window,
                  since)
    return assess(monitor, model_dir, facts, ref, batch, inputs.reference.metrics, cfg.thresholds)


def batch_name(inputs: MonitorInputs) -> str:
    d = inputs.batch_dataset
    return f"{d.repo_id}@{d.sha[:10]}:{inputs.split}" if d else f"{inputs.batch_source}:{inputs.split}"


@task(name="record-monitor")
def record_monitor(inputs: MonitorInputs, report: MonitorReport, cfg: MonitorConfig) -> str:
    """The report as JSON and PNG in the store, and a markdown artifact (the table and the figure)."""
    from hubflow.monitor.report import figure, markdown
    from hubflow.stages.facts import read_facts

    root = store.join(cfg.artifact_store, "monitor", flow_run.get_id() or f"local-{int(time.time())}")
    uri = store.write_json(store.join(root, "report.json"), {
        "model": inputs.model.model_dump(mode="json"), "reference": inputs.reference.model_dump(mode="json"),
        "batch": batch_name(inputs), **report.model_dump(mode="json")})
    names = getattr(read_facts(hub.model_dir(inputs.model)), "label_names", None)
    png = figure(report, names) if report.scores else None
    fig_uri = store.write_bytes(store.join(root, "report.png"), png) if png else None
    ref = inputs.reference
    body = markdown(report, f"{inputs.model.repo_id}@{inputs.model.sha[:10]}", batch_name(inputs),
                    f"{ref.dataset.repo_id}@{ref.dataset.sha[:10]}:{ref.split}", fig_uri)
    if png:
        body += f"\n\n![monitor](data:image/png;base64,{base64.b64encode(png).decode()})"
    create_markdown_artifact(key="monitor", markdown=body, description=(
        f"Monitor of {inputs.model.repo_id}: " + ("degraded " if report.degraded else "")
        + ("drift" if report.drift else "" if report.degraded else "no alarm")))
    if cfg.tracking.enabled:
        track_report(inputs, report, uri, cfg)
    alarms = ", ".join(f"{s.name}={s.value:.4g}" for s in report.alarms()) or "none"
    get_run_logger().info("monitor %s on %d rows: drift=%s degraded=%s (alarms: %s); report %s",
                          inputs.model.repo_id, report.batch_rows, report.drift, report.degraded, alarms, uri)
    return uri


def track_report(inputs: MonitorInputs, report: MonitorReport, report_uri: str, cfg: MonitorConfig) -> str | None:
    """The report as an MLflow run (hubflow/tracking's client): the scores as metrics, the verdicts as tags,
    report.json as an artifact -> the run id. Never on the critical path: an unreachable server is one warning."""
    from hubflow.tracking import client as mlflow_door
    from hubflow.tracking import tracking_uri

    m = inputs.model
    target = TrackingTarget(uri=tracking_uri(cfg.tracking, cfg.artifact_store),
                            experiment=cfg.tracking.experiment or f"{m.repo_id.split('/')[-1]}-monitor",
                            run_name=f"monitor {batch_name(inputs)}")
    try:
        client = mlflow_door.connect(target.uri)
        run = mlflow_door.open_run(client, target, params={
            "model": m.repo_id, "model_sha": m.sha, "batch": batch_name(inputs), "report": report_uri,
            "reference": f"{inputs.reference.dataset.repo_id}@{inputs.reference.dataset.sha}"}, tags={
            "hubflow.monitor.drift": str(report.drift), "hubflow.monitor.degraded": str(report.degraded),
            "prefect.flow_run_id": str(flow_run.get_id())})
        mlflow_door.log_metrics(client, run.run_id, [(s.name, s.value, 0) for s in report.scores])
        mlflow_door.log_json(client, run.run_id, report.model_dump(mode="json"), "monitor/report.json")
        mlflow_door.finish(client, run.run_id)
        return run.run_id
    except mlflow_door.TrackingUnavailable as err:
        get_run_logger().warning("monitor report not tracked: %s", err)
        return None


def alarm_event_id(event: str, model: PinnedRepo, cooldown_hours: float, now: float | None = None) -> uuid.UUID:
    """One id per (model sha, cooldown window): the claim record refuses a repeat and Prefect's server drops a
    repeated event id, so the nightly alarms about one shift start one retrain."""
    window = int((now or time.time()) // (cooldown_hours * 3600)) if cooldown_hours else uuid.uuid4().hex
    return uuid.uuid5(_EVENT_NS, f"{event}/{model.repo_id}@{model.sha}/{window}")


@task(name="emit-alarms")
def emit_alarms(inputs: MonitorInputs, report: MonitorReport, report_uri: str, cfg: MonitorConfig) -> list[str]:
    """One alarm event for the model repo and sha, the scores as payload: hubflow.model.degraded when live accuracy
    fell below the card's (whatever drifted), else hubflow.model.drift. One per model sha and cooldown window, for
    both names together: a degraded night after a drift night of the same shift starts no second retrain (it is
    logged, not emitted). -> the events emitted."""
    from prefect.events import Event

    from hubflow.events import SeenRevisions, _send

    log = get_run_logger()
    name = "hubflow.model.degraded" if report.degraded else "hubflow.model.drift" if report.drift else None
    if not cfg.emit_events or name is None:
        return []
    m = inputs.model
    event_id = alarm_event_id("alarm", m, cfg.cooldown_hours)
    seen = SeenRevisions()
    try:
        if not seen.claim(event_id, "model", m.repo_id, m.sha, name):
            log.info("%s for %s@%s: an alarm was raised within %g h; not emitted again", name, m.repo_id, m.sha[:10],
                     cfg.cooldown_hours)
            return []
        related = [{"prefect.resource.id": f"hubflow.monitor-report.{report_uri}",
                    "prefect.resource.role": "monitor-report"}]
        if run_id := flow_run.get_id():
            related.append({"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run",
                            "prefect.resource.name": flow_run.get_name() or ""})
        event = Event(event=name, id=uuid.uuid5(event_id, name), related=related, resource={
            "prefect.resource.id": f"hub.model.{m.repo_id}", "prefect.resource.name": m.repo_id,
            "hub.repo.type": "model", "hub.model.sha": m.sha},
            payload={"model": m.repo_id, "sha": m.sha, "batch": batch_name(inputs), "report": report_uri,
                     "drift": report.drift, "degraded": report.degraded, **report.payload()})
        try:
            _send(event)
        except BaseException:
            seen.release(event_id)
            raise
    finally:
        seen.close()
    log.warning("%s: %s@%s (%s)", name, m.repo_id, m.sha[:10], ", ".join(s.name for s in report.alarms()))
    return [name]
