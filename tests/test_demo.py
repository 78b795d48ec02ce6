"""`hubflow demo` as a user runs it: a subprocess, a fresh work dir, the real MiniLM, then a rerun from cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HUBFLOW = str(Path(sys.executable).with_name("hubflow"))


# What the libraries print when left alone: their progress bars, transformers' load report (ANSI), and Prefect's
# per-task engine lines. The terminal gets hubflow's lines; `--verbose` brings these back.
NOISE = ("Fetching ", "Creating parquet", "Saving the dataset", "Loading weights", "Writing model shards",
         "LOAD REPORT", "\x1b[", "it/s]", "Created task run", "Finished in state", "Traceback")


def demo(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFECT_", "TQDM_", "TRANSFORMERS_"))}
    return subprocess.run([HUBFLOW, "demo", "--workdir", str(workdir), *args], env=env, capture_output=True,
                          text=True, timeout=1500)


def run_demo(workdir: Path) -> tuple[dict, str]:
    proc = demo(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "test accuracy" in proc.stdout and "prefect server start" in proc.stdout
    return json.loads((workdir / "summary.json").read_text()), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    first, first_out = run_demo(workdir)
    second, _ = run_demo(workdir)
    return workdir, first, second, first_out


def test_demo_fine_tunes_minilm_offline(demo_runs):
    workdir, first, _, _ = demo_runs
    assert first["metrics"]["accuracy"] >= 0.85, first["metrics"]
    assert first["metrics"]["test_rows"] >= 200
    assert first["pinned"]["base_model"]["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(first["pinned"]["base_model"]["sha"]) == 40 and len(first["pinned"]["dataset"]["sha"]) == 40
    for name, uri in first["outputs"].items():
        assert uri.startswith(str(workdir)), (name, uri)  # everything stays under the work dir
        assert Path(uri).exists(), (name, uri)
    for sub in ("hub", "hf_home", "prefect", "store"):
        assert (workdir / sub).is_dir()


def test_demo_deploys_the_endpoint_and_prints_a_call_that_answers(demo_runs):
    """The API Space serves the published sha; the InferenceClient call the demo prints was made and answered; the
    token sits in a 0600 file and never on the terminal."""
    import stat

    workdir, first, second, out = demo_runs
    for run in (first, second):
        endpoint = run["endpoint"]
        assert endpoint["stage"] == "RUNNING" and endpoint["model_revision"] == run["published"]["model"]["commit"]
        assert endpoint["call"]["answer"][0]["label"] == "billing", endpoint["call"]
    token_file = Path(first["endpoint"]["token_file"])
    assert token_file.parent == workdir and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token and token not in out and token not in (workdir / "summary.json").read_text()
    assert f'InferenceClient(base_url="{first["endpoint"]["url"]}", token=open("{token_file}")' in out
    assert "-> billing" in out


def test_demo_rerun_is_served_from_cache(demo_runs):
    _, first, second, _ = demo_runs
    for stage in ("pull-dataset", "preprocess", "train", "predict", "evaluate"):
        assert second["stages"][stage] == "Cached", second["stages"]
    assert second["metrics"] == first["metrics"]
    assert second["pinned"] == first["pinned"]


def test_demo_terminal_shows_hubflows_lines_and_no_library_noise(demo_runs):
    """One style: hubflow's data line and one progress line per long stage; no bars, load reports or engine lines."""
    import re

    *_, out = demo_runs
    assert [noise for noise in NOISE if noise in out] == [], out[-4000:]
    assert re.search(r"hubflow - data \S+: .*rows", out) and re.search(r"train +\d+% step", out), out[-4000:]
    assert re.search(r"predict +100% shard", out), out[-4000:]


def test_a_failed_demo_prints_its_cause_once_with_the_stage(tmp_path):
    """A demo whose run fails: one line with the stage and the cause, no traceback, exit 1; the run's log keeps
    the traceback."""
    proc = demo(tmp_path / "demo", "--set", "data.text_column=body_text", "--set", "space.enabled=false")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    cause = [line for line in out.splitlines() if "body_text" in line]
    assert len(cause) == 1 and cause[0].startswith("hubflow demo: the run failed: in "), out[-4000:]
