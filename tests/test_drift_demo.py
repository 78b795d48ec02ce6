"""`hubflow demo --scenario drift`: the slow end-to-end run as a user runs it (a subprocess, a fresh work dir, the
real MiniLM, a real Prefect server whose automation starts the retrain), and fast checks of its parts: the shipped
triggers it serves, the batches it draws, the CLI's refusal of an unknown scenario. The fast path of the same loop
(a monitor alarm -> the shipped trigger -> a retrain run created by the automation) is tests/test_monitor_flow.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HUBFLOW = str(Path(sys.executable).with_name("hubflow"))


@pytest.mark.slow
def test_drift_scenario_alarms_retrains_and_publishes_the_better_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFECT_", "TQDM_", "TRANSFORMERS_"))}
    proc = subprocess.run([HUBFLOW, "demo", "--scenario", "drift", "--workdir", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=5400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    *quiet, shifted = s["nights"]
    assert len(quiet) == 3 and not any(n["drift"] or n["degraded"] or n["events"] for n in quiet), quiet
    assert shifted["drift"] and len(shifted["events"]) == 1 and s["alarm"] == shifted["events"]
    # The server's automation started the retrain (not this process), on the newest data revision.
    assert s["retrain"]["state"] == "Completed" and s["retrain"]["created_by"].startswith("retrain on a monitor")
    assert s["retrain"]["data"]["sha"] == s["training_revision"]
    # The chained publish ran the champion gate on the new revision's test split (the new line in it): the retrain,
    # trained as the first model was on a revision that covers the shift, is a significant win and main serves it.
    # Measured: 0.937 vs 0.865 macro-F1 on 550 rows, p = 0.001 (docs/monitoring.md, Measured).
    assert s["gate"]["state"] == "Completed" and s["gate"]["promoted"] is True, s["gate"]
    assert s["gate"]["p_value"] <= 0.05 and s["gate"]["challenger"] > s["gate"]["champion"], s["gate"]
    before, after = s["after"]["before"], s["after"]["after"]
    assert after["model_sha"] != s["model"]["sha"] == before["model_sha"]
    # held-out tickets of the new line (in no split): the old model is below its card, the new one better
    assert before["degraded"] and after["live"]["accuracy"] > before["live"]["accuracy"], (before, after)


def test_the_demo_serves_the_shipped_triggers_with_its_own_store():
    from hubflow.ops.demo_drift import shipped_deployments

    spec = shipped_deployments("/tmp/somewhere/store")
    (alarm,) = [t for t in spec["retrain"]["triggers"] if "hubflow.model.drift" in t["expect"]]
    assert alarm["parameters"]["config"]["artifact_store"] == "/tmp/somewhere/store"
    assert alarm["parameters"]["config"]["data"]["revision"] == "main"
    (chain,) = spec["on-train-complete"]["triggers"]
    assert chain["parameters"]["summary_uri"].startswith("/tmp/somewhere/store/runs/{{ event.resource.id")
    (after_nightly,) = spec["published-model"]["triggers"]
    assert after_nightly["parameters"]["config"]["batch"]["source"].startswith("/tmp/somewhere/store/batch/")
    assert "{{ $HUBFLOW_STORE }}" not in json.dumps(spec)


def test_nightly_batches_are_deterministic_and_the_shift_is_the_share_asked_for():
    from hubflow.demo_data import DEMO_LABELS, ticket_batch

    a, b = ticket_batch(400, seed=3, shift=0.2), ticket_batch(400, seed=3, shift=0.2)
    assert a == b and len({t for t, _ in a}) == 400 and {lab for _, lab in a} == set(DEMO_LABELS)
    assert sum("I am writing to inform you" in t for t, _ in a) == 80
    assert not any("I am writing to inform you" in t for t, _ in ticket_batch(400, seed=4))


def test_an_unknown_scenario_is_one_line():
    proc = subprocess.run([HUBFLOW, "demo", "--scenario", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr and "Traceback" not in proc.stderr
