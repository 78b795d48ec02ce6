"""`hubflow demo` as a user runs it: a subprocess, a fresh work dir, the real MiniLM, then a rerun from cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HUBFLOW = str(Path(sys.executable).with_name("hubflow"))


def run_demo(workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFECT_"))}
    proc = subprocess.run([HUBFLOW, "demo", "--workdir", str(workdir)], env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "test accuracy" in proc.stdout and "prefect server start" in proc.stdout
    return json.loads((workdir / "summary.json").read_text())


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    first = run_demo(workdir)
    second = run_demo(workdir)
    return workdir, first, second


def test_demo_fine_tunes_minilm_offline(demo_runs):
    workdir, first, _ = demo_runs
    assert first["metrics"]["accuracy"] >= 0.85, first["metrics"]
    assert first["metrics"]["test_rows"] >= 200
    assert first["pinned"]["base_model"]["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(first["pinned"]["base_model"]["sha"]) == 40 and len(first["pinned"]["dataset"]["sha"]) == 40
    for name, uri in first["outputs"].items():
        assert uri.startswith(str(workdir)), (name, uri)  # everything stays under the work dir
        assert Path(uri).exists(), (name, uri)
    for sub in ("hub", "hf_home", "prefect", "store"):
        assert (workdir / sub).is_dir()


def test_demo_rerun_is_served_from_cache(demo_runs):
    _, first, second = demo_runs
    for stage in ("pull-dataset", "preprocess", "train", "predict", "evaluate"):
        assert second["stages"][stage] == "Cached", second["stages"]
    assert second["metrics"] == first["metrics"]
    assert second["pinned"] == first["pinned"]
