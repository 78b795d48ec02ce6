"""Served traffic for the monitor (issue 21): a real server process with --sample-rate 1 logs each answered row
(the text, the predicted label, its time; never the caller's token) as whole JSON-lines files in a folder, and the
monitor reads a time window of that folder (split `served`) and scores it: traffic in words the model's reference
never had alarms."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_procs import ServerProcess
from tests.tiny import LABELS, make_tiny_bert, synthetic_rows

HANDLER = Path(__file__).resolve().parent.parent / "hubflow" / "kinds" / "text_classification" / "serve.py"
TOKEN = "sample-test-token-0123456789"
NEW_WORDS = ["inverter", "photovoltaic", "charger", "wallbox", "kilowatt", "tariff", "grid", "battery"]


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory) -> Path:
    from hubflow.kinds.text_classification.settings import ClassifierFacts
    from hubflow.stages.facts import write_facts

    folder = make_tiny_bert(tmp_path_factory.mktemp("clf") / "model")
    config = json.loads((folder / "config.json").read_text())
    config.update(id2label={str(i): n for i, n in enumerate(LABELS)}, label2id={n: i for i, n in enumerate(LABELS)})
    (folder / "config.json").write_text(json.dumps(config))
    write_facts(folder, ClassifierFacts(max_length=32, label_names=LABELS))
    return folder


def shifted_texts(n: int) -> list[str]:
    """The tiny model's texts with words its reference never had mixed in (a new product line, as it were)."""
    return [f"{t} {NEW_WORDS[i % 8]} {NEW_WORDS[(i * 3 + 1) % 8]}" for i, (t, _) in enumerate(synthetic_rows(n, 9))]


def test_a_sampled_server_logs_rows_the_monitor_reads_and_scores(clf_dir, tmp_path):
    from hubflow.kinds import kind_for
    from hubflow.kinds.text_classification.settings import ClassifierFacts
    from hubflow.monitor.assess import Rows, assess
    from hubflow.monitor.lineage import rows_of
    from hubflow.monitor.settings import Thresholds
    from hubflow.stages.pull import load_files_split

    token_file, sample = tmp_path / "token", tmp_path / "served"
    token_file.write_text(TOKEN)
    started = time.time()
    # configured as a Space is: variables, the token a secret in the environment
    proc = ServerProcess.script(clf_dir, HANDLER, env={"SERVE_TOKEN": TOKEN, "SERVE_SAMPLE_RATE": "1.0",
                                                       "SERVE_SAMPLE_TO": str(sample), "SERVE_SAMPLE_SECONDS": "1",
                                                       "SERVE_THREADS": "1"})
    texts = shifted_texts(60)
    try:
        proc.wait_ready()
        answers = []
        with httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            for i in range(0, len(texts), 5):  # 12 requests of 5 rows
                r = client.post("/predict", json={"inputs": texts[i:i + 5], "parameters": {"top_k": 1}})
                assert r.status_code == 200, r.text
                answers += [row[0]["label"] for row in r.json()]
        deadline = time.monotonic() + 30  # written while serving (every second), not only at shutdown
        while time.monotonic() < deadline and sum(len(p.read_text().splitlines())
                                                  for p in sample.glob("served-*.jsonl")) < len(texts):
            time.sleep(0.5)
    finally:
        assert proc.stop() == 0
    files = sorted(sample.iterdir())
    assert files and all(p.name.startswith("served-") and p.suffix == ".jsonl" for p in files), files  # no .part
    rows = [json.loads(line) for p in files for line in p.read_text().splitlines()]
    assert [r["text"] for r in rows] == texts and [r["prediction"] for r in rows] == answers
    assert all(started <= r["time"] <= time.time() and r["route"] == "/predict" for r in rows)
    raw = "".join(p.read_text() for p in files)
    assert TOKEN not in raw and "authorization" not in raw.lower()

    # The monitor's batch: the folder's split `served`, a time window (the last hour) -> the same rows, newest last
    ds = load_files_split(str(sample), "served", setting="batch.split")
    batch = rows_of(ds, "text", "label", since=time.time() - 3600)
    assert batch.texts == texts and batch.labels is None  # predictions are not labels: no live accuracy from them
    assert rows_of(ds, "text", since=time.time() + 1).texts == []
    assert rows_of(ds, "text", window=10).texts == texts[-10:]
    facts = ClassifierFacts(task="text-classification", max_length=32, label_names=LABELS)
    reference = Rows(texts=[t for t, _ in synthetic_rows(120, seed=1)])
    report = assess(kind_for("text-classification").monitor, str(clf_dir), facts, reference, batch, {}, Thresholds())
    assert report.drift and "unknown_word_rise" in {s.name for s in report.alarms()}, report.scores


def test_sampling_settings_are_checked_in_one_line(clf_dir):
    import subprocess
    import sys

    from tests.serve_procs import SERVER

    proc = subprocess.run([sys.executable, str(SERVER), "--model", str(clf_dir), "--public", "--sample-rate", "0.5"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs --sample-to" in proc.stderr and "Traceback" not in proc.stderr
