"""Rerun vs first run: `hubflow demo` twice on one work dir, nothing changed in between (opt-in: --only rerun_vs_first).

Each run is a fresh `hubflow demo` process (localhub subprocess + Prefect's embedded server + the pipeline) with
the demo's own recipe (2 epochs over 2,000 tickets; a few minutes on 2 cores), or with a tiny config under --quick.
The figure is `summary.json`'s `wall_seconds` (from starting localhub to stopping it, Python's start and the CLI's
imports excluded), rerun / first: lower is better. A rerun still pays fixed costs (starting localhub and Prefect,
pinning revisions), so with the tiny config the ratio is much higher than with the real recipe. The rerun's
breakdown comes from the demo's own clock (`summary.json`'s `phases`: localhub, imports, Prefect's server and the
flow run, each task from Prefect's task runs); "outside run_demo" is the whole process less `wall_seconds`.
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
    cmd = [sys.executable, "-c", "from hubflow.ops.cli import main; main()", "demo", "--workdir", str(workdir)]
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
        runs.append((summary["wall_seconds"], process_seconds, summary["stages"], summary.get("phases")))

    (first, first_proc, _, _), (again, again_proc, stages, phases) = runs
    recipe = " ".join(TINY) if quick else "the demo recipe as is"
    report.figure(f"\n# rerun: hubflow demo ({recipe}), twice on one work dir")
    report.figure(f"  first run  summary wall_seconds {first:.1f} s   (whole process {first_proc:.1f} s)")
    report.figure(f"  rerun      summary wall_seconds {again:.1f} s   (whole process {again_proc:.1f} s)")
    report.figure("  rerun stage states: " + ", ".join(f"{k}: {v}" for k, v in stages.items()))
    if phases:
        report.figure(breakdown(phases, again, again_proc))
    report.ratios["rerun_vs_first"] = again / first


def breakdown(phases: dict, wall: float, process: float) -> str:
    """The rerun's seconds by phase, as indented `phase  seconds` lines (tasks under the flow run)."""
    lines = ["  rerun breakdown (s):",
             f"    {'outside run_demo (Python start, CLI imports, exit)':<56}{process - wall:6.1f}"]
    for name, seconds in phases["wall"].items():
        lines.append(f"    {name:<56}{seconds:6.1f}")
        if name.startswith("flow run ("):
            lines += [f"      task {task:<49}{sec:6.2f}" for task, sec in phases["tasks"].items()]
    return "\n".join(lines)
