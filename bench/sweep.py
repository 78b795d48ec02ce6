"""Sweeps on the gpu pool: a 12-trial sweep with 2 process workers and pruning vs one default trial.

    python -m bench.sweep                 # the demo data, scaled (see SCALED): ~40 min on 2 busy cores
    python -m bench.sweep --full          # the demo recipe's own sizes (2,000 tickets; hours on 2 shared cores)
    python -m bench.sweep --trials 4      # a smoke run

One localhub (all-MiniLM-L6-v2 + the support-tickets dataset, as `hubflow demo` seeds it), one Prefect server, the
gpu pool with 2 process workers (one run at a time each) and the hubflow-train/gpu and hubflow-predict/gpu
deployments from deployments/prefect.yaml; the store and Prefect's results are folders every process sees. Each
contender is a `hubflow` command (a fresh process), deployments/configs/demo-sweep.yaml in pools mode, publishing
off, its own artifact store (no cache hit across contenders):

    default     `hubflow run` of the recipe: one default trial (train + predict on the pool, evaluate)
    sweep       `hubflow sweep`: 12 trials, 2 at a time (the pool's online workers), median pruning
    no-pruning  the same sweep, pruner none
    serial      the same sweep, parallelism 1

Figures: wall seconds of each command, sweep / default (target <= 4), the best trial's test macro-F1 vs the
default's, and how many trials were pruned after which epoch (from the study).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RECIPE = ROOT / "deployments" / "configs" / "demo-sweep.yaml"
# 2 cores shared with other jobs train MiniLM at ~2-4 samples/s: the default scale is the demo data cut to 96 train,
# 64 validation and 128 test tickets of 48 tokens, and 1-3 epochs (the recipe's space otherwise).
SCALED = ["data.max_train_samples=96", "data.max_eval_samples=64", "data.max_test_samples=128",
          "preprocess.max_length=48",
          "sweep.space=[{field: train.learning_rate, distribution: log_uniform, low: 2.0e-5, high: 5.0e-4}, "
          "{field: train.epochs, distribution: int, low: 1, high: 3}, "
          "{field: train.warmup_ratio, distribution: choice, choices: [0.0, 0.06, 0.1, 0.2]}]"]
POOLS = ["execution.mode=pools", "execution.timeout_seconds=3600", "publish.enabled=false", "space.enabled=false"]


@contextmanager
def gpu_pool(root: Path, env: dict[str, str], workers: int = 2) -> Iterator[dict[str, str]]:
    """The gpu pool with `workers` process workers (one run at a time each) and the train and predict deployments,
    against the Prefect server at env's PREFECT_API_URL; the store and results under `root`. Yields the env every
    command of the topology runs with; stops the workers (by process group) on the way out."""
    env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
           "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_LOCAL_STORAGE_PATH": str(root / "results"),
           "HUBFLOW_STORE": str(root / "store"), "PREFECT_LOGGING_EXTRA_LOGGERS": "hubflow",
           "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([str(BIN / "hubflow"), "pools", "up"], env=env, cwd=ROOT, check=True, capture_output=True)
    # The gpu stages' deployments only, as deployments/prefect.yaml writes them (its pools, pull steps, build checks).
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    gpu = [d for d in spec["deployments"] if d["entrypoint"] in ("flows/train.py:train_flow",
                                                                  "flows/predict.py:predict_flow")]
    prefect_file = root / "prefect-gpu.yaml"
    prefect_file.write_text(yaml.safe_dump({**spec, "deployments": gpu}, sort_keys=False))
    deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(prefect_file),
                             "--all"], env=env, cwd=ROOT, capture_output=True, text=True)
    if deploy.returncode:
        raise RuntimeError(f"prefect deploy failed:\n{deploy.stdout[-2000:]}\n{deploy.stderr[-2000:]}")
    procs = []
    try:
        for k in range(1, workers + 1):
            home = root / f"gpu-{k}"
            home.mkdir(parents=True, exist_ok=True)
            log = open(home / "worker.log", "wb")
            procs.append(subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--name", f"gpu-{k}", "--type", "process",
                 "--limit", "1"], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_online(env["PREFECT_API_URL"], workers)
        yield env
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _wait_online(api_url: str, workers: int, timeout: float = 180) -> None:
    code = ("import sys; from prefect.client.orchestration import SyncPrefectClient; "
            "from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus\n"
            f"c = SyncPrefectClient({api_url!r}); c.__enter__()\n"
            "print(len(c.read_workers_for_work_pool('gpu', worker_filter=WorkerFilter("
            "status=WorkerFilterStatus(any_=['ONLINE'])))))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode == 0 and int(out.stdout.strip() or 0) >= workers:
            return
        time.sleep(2)
    raise TimeoutError(f"{workers} gpu workers were not online within {timeout:.0f} s")


def hubflow(env: dict[str, str], command: str, sets: list[str], recipe: Path = RECIPE):
    """Run `hubflow COMMAND RECIPE --set ...` -> (wall seconds, the run's PipelineResult)."""
    from hubflow.refs import PipelineResult

    cmd = [sys.executable, "-c", "from hubflow.ops.cli import main; main()", command, str(recipe)]
    for item in sets:
        cmd += ["--set", item]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"hubflow {command} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = next(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("summary: "))
    return seconds, PipelineResult.model_validate_json(Path(summary).read_text())


def pruned_when(result) -> list[int]:
    """The epochs after which the sweep's trials were pruned (from the study in its storage)."""
    import optuna

    from hubflow.experiments.study import open_storage, storage_url

    url = storage_url(None, result.config.artifact_store, result.sweep.study)
    study = optuna.load_study(study_name=result.sweep.study, storage=open_storage(url))
    return sorted(t.user_attrs["pruned_at"]["epoch"] for t in study.trials if "pruned_at" in t.user_attrs)


def main(argv: list[str] | None = None) -> None:
    from hubflow.ops.demo import demo_hub, demo_seed

    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the recipe's own data sizes (no scaling)")
    parser.add_argument("--trials", type=int, default=12, help="trials per sweep (default 12)")
    parser.add_argument("--only", action="append", choices=("sweep", "no-pruning", "serial"),
                        help="sweep contenders to run (default all three)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="hubflow-bench-sweep-"))
    scale = [] if args.full else SCALED
    common = [*scale, *POOLS, f"sweep.trials={args.trials}"]
    contenders = {"sweep": [], "no-pruning": ["sweep.pruner=none"], "serial": ["sweep.parallelism=1"]}
    with demo_hub(root, demo_seed):
        with gpu_pool(root, dict(os.environ)) as env:
            figures = {}
            seconds, default = hubflow(env, "run", [*common, f"artifact_store={root / 'store-default'}"])
            figures["default"] = {"seconds": round(seconds, 1), "macro_f1": default.evaluation.metrics["macro_f1"]}
            print(f"default trial: {seconds:.1f} s, test macro-F1 {figures['default']['macro_f1']:.4f}", flush=True)
            for name, extra in contenders.items():
                if args.only and name not in args.only:
                    continue
                seconds, result = hubflow(env, "sweep", [*common, *extra, f"artifact_store={root / f'store-{name}'}"])
                s = result.sweep
                figures[name] = {"seconds": round(seconds, 1), "vs_default": round(seconds / figures["default"]
                                 ["seconds"], 2), "macro_f1": result.evaluation.metrics["macro_f1"],
                                 "best_validation": s.best_value, "best_trial": s.best_trial,
                                 "best_params": s.best_params, "complete": s.complete, "pruned": s.pruned,
                                 "failed": s.failed, "pruned_after_epochs": pruned_when(result)}
                print(f"{name}: {json.dumps(figures[name])}", flush=True)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
