"""Watch a published model: compare a batch of new rows (and the model's predictions on them) with the test split
it was published with; report, and raise `hubflow.model.drift` / `hubflow.model.degraded` when a score crosses its
threshold. The retrain deployment listens to those events (deployments/prefect.yaml).

    from hubflow.flows.monitor import monitor
    from hubflow.monitor.settings import BatchSource, MonitorConfig
    monitor(MonitorConfig(model_repo_id="demo/minilm-support-tickets", batch=BatchSource(source="me/incoming")))

Deployed as `hubflow-monitor/after-nightly` (after each nightly batch inference: its summary.json names the model
and rows it used) and `hubflow-monitor/on-demand` (the UI's form is MonitorConfig). docs/monitoring.md has the
signals, their thresholds and their measured false-alarm rates.
"""

from __future__ import annotations

from prefect import flow

from hubflow.monitor.assess import MonitorReport
from hubflow.monitor.settings import MonitorConfig
from hubflow.refs import PinnedRepo, Ref
from hubflow.tasks.monitor import assess_batch, emit_alarms, pin_monitor_inputs, record_monitor


class MonitorOutcome(Ref):
    """What a monitor run found and said: the model, the report (and where it is stored), the events emitted."""

    model: PinnedRepo
    report: MonitorReport
    report_uri: str
    events: list[str]


@flow(name="hubflow-monitor", persist_result=True, log_prints=True)
def monitor(config: MonitorConfig) -> MonitorOutcome:
    """Assess `config.batch` against the model's reference; record the report; emit the alarms."""
    inputs = pin_monitor_inputs(config)
    report = assess_batch(inputs, config)
    report_uri = record_monitor(inputs, report, config)
    events = emit_alarms(inputs, report, report_uri, config)
    return MonitorOutcome(model=inputs.model, report=report, report_uri=report_uri, events=events)
