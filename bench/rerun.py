"""Rerun vs first run: `hubflow demo` twice on one work dir, nothing changed in between (opt-in: --only rerun_vs_first).

Each run is a fresh `hubflow demo` process (localhub subprocess + Prefect's embedded server + the pipeline) with
the demo's own recipe (2 epochs over 2,000 tickets; a few minutes on 2 cores), or with a tiny config under --quick.
The figure is `summary.json`'s `wall_seconds` (from starting localhub to the flow's end, Python imports excluded),
rerun / first: lower is better. A rerun still pays fixed costs (starting localhub and Prefect, pinning revisions),
so with the tiny config the ratio is much higher than with the real recipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Report

TINY = ["data.max_train_samples=256", "data.max_eval_samples=64", "data.max_test_samples=128", "train.epochs=1"]
_OURS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_DATASETS_CACHE")


def run(root: Path, quick: bool, report: Report) -> None:
    workdir = root / "demo"
    env = {k: v for k, v in os.environ.items() if k not in _OURS}  # the demo talks to its own localhub
    cmd = [sys.executable, "-c", "from hubflow.cli import main; main()", "demo", "--workdir", str(workdir)]
    for item in TINY if quick else []:
        cmd += ["--set", item]
    runs = []
    for attempt in ("first", "rerun"):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        process_seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"hubflow demo ({attempt}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        summary = json.loads((workdir / "summary.json").read_text())
        runs.append((summary["wall_seconds"], process_seconds, summary["stages"]))

    (first, first_proc, _), (again, again_proc, stages) = runs
    recipe = " ".join(TINY) if quick else "the demo recipe as is"
    report.figure(f"\n# rerun: hubflow demo ({recipe}), twice on one work dir")
    report.figure(f"  first run  summary wall_seconds {first:.1f} s   (whole process {first_proc:.1f} s)")
    report.figure(f"  rerun      summary wall_seconds {again:.1f} s   (whole process {again_proc:.1f} s)")
    report.figure("  rerun stage states: " + ", ".join(f"{k}: {v}" for k, v in stages.items()))
    report.ratios["rerun_vs_first"] = again / first
