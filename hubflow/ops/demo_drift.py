"""`hubflow demo --scenario drift`: the loop closed, offline. Everything under one work dir, as `hubflow demo`.

1. The demo's model: MiniLM fine-tuned on the support tickets and published (the pipeline, champion gate).
2. The retrain and publish deployments, with the triggers deployments/prefect.yaml ships (the monitor alarm starts
   a retrain on the newest data revision; a completed retrain chains into the publish flow and its champion gate),
   served by a runner process against this demo's Prefect server: what starts the retrain is the server's
   automation, not this script.
3. Nightly batches of fresh tickets, each a new revision of hubflow/support-tickets-incoming, monitored: a few
   unshifted (no alarm), then one where a new product line in a new register appears (alarm). Before that night,
   the support team's labelled tickets of the new line join the training data (a new revision on main).
4. The alarm's event -> the retrain run (created by the automation) -> the publish run -> the gate's decision.
5. Accuracy before and after, on held-out shifted tickets (in no training split): the monitor with labels.

DIR/summary.json: each night's scores and alarms, the event, the retrain's flow run, the gate's decision, accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .demo import RECIPE, demo_hub, demo_seed

ROOT = Path(__file__).resolve().parent.parent.parent
INCOMING = "hubflow/support-tickets-incoming"
WRITERS = {"hubflow": {"demo": "write"}}  # the demo user adds revisions to the seeded hubflow/ datasets
TRAINING = "hubflow/support-tickets"
ADDED = {"train": 800, "validation": 80, "test": 150}  # labelled tickets of the new line joining the training data
# Both trainings (the first model and the automatic retrain) are the demo recipe's, lighter, with the same settings:
# one epoch at 64 tokens over the whole train split of their revision (2,000 rows, then 2,800 with the new line).
# A cap on rows would hand the retrain fewer of the old tickets than the first model had (the new rows take their
# place) and only ~290 of the new line: a retrain no better on the new test split, which the gate rightly refused.
# `--set` adds to these.
SETTINGS = ["train.epochs=1", "data.max_train_samples=3000", "preprocess.max_length=64", "space.enabled=false"]


def shipped_deployments(store: str) -> dict[str, dict]:
    """deployments/prefect.yaml's deployments by name, with this demo's store for $HUBFLOW_STORE."""
    import yaml

    text = (ROOT / "deployments" / "prefect.yaml").read_text().replace("{{ $HUBFLOW_STORE }}", store)
    return {d["name"]: d for d in yaml.safe_load(text)["deployments"]}


def retrain_config(store: str, overrides: list[str]) -> dict:
    """The config the shipped alarm trigger retrains with, plus the scenario's settings (execution local: the demo
    has no gpu pool), as the trigger's parameters."""
    import tempfile

    import yaml

    from ..config import load_recipe

    spec = shipped_deployments(store)
    (alarm,) = [t for t in spec["retrain"]["triggers"] if "hubflow.model.drift" in t["expect"]]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(alarm["parameters"]["config"], f)
    try:
        config = load_recipe(f.name, [*SETTINGS, "execution.mode=local", *overrides])
    finally:
        os.unlink(f.name)
    return config.model_dump(mode="json")


def serve_loop(store: str, overrides: list[str]) -> None:
    """The runner process: retrain (its monitor-alarm trigger) and on-train-complete (its chain trigger) as shipped,
    run in this process's environment."""
    from prefect import serve
    from prefect.events import DeploymentEventTrigger

    from ..flows.pipeline import pipeline
    from ..flows.publish import publish_run

    spec = shipped_deployments(store)
    (alarm,) = [t for t in spec["retrain"]["triggers"] if "hubflow.model.drift" in t["expect"]]
    config = retrain_config(store, overrides)
    alarm = {**alarm, "parameters": {"config": config}}
    publish = spec["on-train-complete"]
    serve(pipeline.to_deployment(name="retrain", triggers=[DeploymentEventTrigger(**alarm)],
                                 parameters={"config": config}),
          publish_run.to_deployment(name="on-train-complete", parameters=publish["parameters"],
                                    triggers=[DeploymentEventTrigger(**t) for t in publish["triggers"]]),
          print_starting_message=False, limit=1)


class Runner:
    """`serve_loop` in a process of its own (stopped by pid), logging to DIR/runner.log."""

    def __init__(self, workdir: Path, store: str, overrides: list[str]):
        env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
        self.log = open(workdir / "runner.log", "ab")
        code = f"from hubflow.ops.demo_drift import serve_loop; serve_loop({store!r}, {overrides!r})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        for _ in range(2):  # Prefect's runner takes the first SIGTERM as "shut down gracefully" and may linger
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def push_rows(repo_id: str, splits: dict[str, list[tuple[str, str]]], message: str) -> str:
    """{split: [(text, label)]} as the dataset repo's whole content (a new commit) -> its sha."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    ops = []
    for split, rows in splits.items():
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}), buf)
        ops.append(CommitOperationAdd(f"data/{split}-00000-of-00001.parquet", buf.getvalue()))
    return api.create_commit(repo_id, ops, commit_message=message, repo_type="dataset").oid


def seeded_revision(api) -> str:
    """The training data's first commit that holds data (the repo's very first commit is an empty one)."""
    for commit in reversed(api.list_repo_commits(TRAINING, repo_type="dataset")):
        if any(f.startswith("data/") for f in api.list_repo_files(TRAINING, repo_type="dataset",
                                                                   revision=commit.commit_id)):
            return commit.commit_id
    raise RuntimeError(f"{TRAINING} holds no data/ files")


def covering_revision(workdir: Path, seed: int = 7) -> str:
    """A new revision of the training data on main: the original splits plus labelled tickets of the new line,
    with its card (the card states each split's size, which `datasets` checks)."""
    import random

    from datasets import Dataset, DatasetDict
    from huggingface_hub import HfApi

    from ..demo_data import DEMO_LABELS, build_demo_dataset, ticket_batch, tickets_card, write_hub_layout

    base = build_demo_dataset(0)
    splits = {}
    for i, (split, n) in enumerate(ADDED.items()):
        new = [(t, DEMO_LABELS.index(lab)) for t, lab in ticket_batch(n, seed=seed * 100 + i, shift=1.0)]
        rows = list(zip(base[split]["text"], base[split]["label"])) + new
        random.Random(seed + i).shuffle(rows)  # max_train_samples keeps the first rows: mix the new ones in
        splits[split] = Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]},
                                          features=base[split].features)
    dsdict = DatasetDict(splits)
    folder = workdir / "seed" / "support-tickets-v2"
    write_hub_layout(dsdict, folder, tickets_card(dsdict))
    return HfApi().upload_folder(folder_path=str(folder), repo_id=TRAINING, repo_type="dataset",
                                 commit_message="the new product line's labelled tickets join the training data").oid


def wait_run(deployment: str, after: float, timeout: float) -> object:
    """The first flow run of `deployment` created after `after` (epoch s), once it is final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[dep.id]))) if r.created.timestamp() >= after]
            if runs and runs[0].state and runs[0].state.is_final():
                return runs[0]
            time.sleep(2)
    raise TimeoutError(f"no finished run of {deployment} within {timeout:.0f} s (see runner.log)")


def wait_deployments(names: list[str], timeout: float = 180) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        for name in names:
            while True:
                try:
                    client.read_deployment_by_name(name)
                    break
                except ObjectNotFound:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the runner did not create {name} (see runner.log)") from None
                    time.sleep(1)
    time.sleep(3)  # the server's trigger service picks up new automations on its own loop


def night(config_cls, model: str, revision: str, store: str, model_revision: str = "main", emit: bool = True):
    """The monitor flow over one revision of the incoming tickets (labelled: live accuracy is scored too)."""
    from ..flows.monitor import monitor
    from ..monitor.settings import BatchSource

    batch = BatchSource(source=INCOMING, revision=revision, label_column="label")
    # cooldown 0: every alarm of this run emits (a rerun of the demo against the same Prefect database alarms again)
    return monitor(config_cls(model_repo_id=model, model_revision=model_revision, batch=batch,
                              artifact_store=store, emit_events=emit, cooldown_hours=0))


def record(out, shift: float, revision: str) -> dict:
    r = out.report
    accuracy = {s.name.removeprefix("live_").removesuffix("_upper"): s.batch for s in r.scores
                if s.signal == "degraded"}
    return {"revision": revision, "shift": shift, "model_sha": out.model.sha, "drift": r.drift,
            "degraded": r.degraded, "alarms": [s.name for s in r.alarms()], "events": out.events,
            "scores": {s.name: s.value for s in r.scores}, "live": accuracy, "report": out.report_uri}


def run_drift_demo(workdir: str | Path, overrides: list[str] | None = None, verbose: bool = False,
                   nights: int = 3, rows: int = 400, shift: float = 0.3) -> dict:
    """The scenario above; returns (and writes) the summary."""
    from ..demo_data import ticket_batch

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store = str(workdir / "store")
    started = time.time()
    summary: dict = {"nights": []}
    # The alarm's cooldown record (hubflow.events.SeenRevisions) of this run only: a rerun alarms again.
    os.environ["HUBFLOW_STATE_DIR"] = str(workdir / "state" / str(int(started)))
    with demo_hub(workdir, demo_seed, wait_for_prefect=False, orgs=WRITERS) as prefect:
        from huggingface_hub import HfApi

        from ..config import load_recipe
        from ..doors import hub
        from ..flows.pipeline import pipeline
        from ..monitor.settings import MonitorConfig
        from .console import RunFailed, prefect_console, run_failure

        overrides = list(overrides or [])
        config = load_recipe(RECIPE, [f"artifact_store={store}", *SETTINGS, *overrides])
        prefect_console(verbose)
        prefect.wait()
        runner = Runner(workdir, store, overrides)
        try:
            # The demo's model is trained on the seeded revision: on a rerun, main already holds the new line.
            seeded = seeded_revision(HfApi())
            config = config.model_copy(update={"data": config.data.model_copy(update={"revision": seeded})})
            state = pipeline(config, return_state=True)
            if not state.is_completed():
                raise RunFailed(f"the demo's model: {run_failure(state)}")
            first = state.result()
            model = config.publish.repo_id
            # A rerun's model is the champion already (the gate then publishes nothing): the head is the model.
            head = hub.pin(model, "model", "main", "publish").sha
            summary["model"] = {"repo_id": model, "sha": head, "test": first.evaluation.metrics}
            print(f"published {model}@{head[:10]}; test macro-F1 {first.evaluation.metrics['macro_f1']:.4f}")
            wait_deployments(["hubflow-pipeline/retrain", "hubflow-publish/on-train-complete"])
            for i in range(nights):
                sha = push_rows(INCOMING, {"test": ticket_batch(rows, seed=1000 + i)}, f"night {i + 1}")
                summary["nights"].append(record(night(MonitorConfig, model, sha, store), 0.0, sha))
                print(f"night {i + 1}: {_line(summary['nights'][-1])}")
            summary["training_revision"] = covering_revision(workdir)
            print(f"new training data {TRAINING}@{summary['training_revision'][:10]} (the new line, labelled)")
            sha = push_rows(INCOMING, {"test": ticket_batch(rows, seed=2000, shift=shift)}, "night: new line")
            alarm_at = time.time()
            summary["nights"].append(record(night(MonitorConfig, model, sha, store), shift, sha))
            print(f"night {nights + 1}: {_line(summary['nights'][-1])}")
            summary["alarm"] = summary["nights"][-1]["events"]
            retrain = wait_run("hubflow-pipeline/retrain", alarm_at, 3600)
            if not retrain.state.is_completed():
                raise RunFailed(f"the automatic retrain {retrain.name} {retrain.state.name.lower()}: "
                                f"{retrain.state.message} (see {workdir / 'runner.log'})")
            published = wait_run("hubflow-publish/on-train-complete", alarm_at, 1200)
            run = json.loads(Path(store, "runs", str(retrain.id), "summary.json").read_text())
            decision = (run.get("published") or {}).get("decision") or {}
            summary["retrain"] = {"flow_run_id": str(retrain.id), "name": retrain.name, "state": retrain.state.name,
                                  "created_by": retrain.created_by.display_value if retrain.created_by else None,
                                  "data": run["dataset"], "test": run["evaluation"]["metrics"]}
            summary["gate"] = {"publish_run": str(published.id), "state": published.state.name, **decision}
            print(f"retrain {retrain.name} ({summary['retrain']['created_by']}): {retrain.state.name}; gate: "
                  f"{decision.get('reason')}")
            summary["after"] = before_after(MonitorConfig, model, summary["model"]["sha"], store, rows, shift)
        finally:
            runner.stop()
    summary["wall_seconds"] = round(time.time() - started, 1)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary {workdir / 'summary.json'}")
    return summary


def before_after(config_cls, model: str, old_sha: str, store: str, rows: int, shift: float) -> dict:
    """The old and the published model on held-out tickets of the new line (in no training split), labelled."""
    from ..demo_data import ticket_batch

    sha = push_rows(INCOMING, {"test": ticket_batch(rows, seed=3000, shift=1.0)}, "held-out tickets of the new line")
    old = record(night(config_cls, model, sha, store, model_revision=old_sha, emit=False), 1.0, sha)
    new = record(night(config_cls, model, sha, store, emit=False), 1.0, sha)
    print(f"held-out new-line tickets: accuracy {old['live'].get('accuracy')} -> {new['live'].get('accuracy')}")
    return {"revision": sha, "before": old, "after": new}


def _line(n: dict) -> str:
    verdict = "ALARM " + ", ".join(n["alarms"]) if n["alarms"] else "no alarm"
    return f"shift {n['shift']:.0%}: {verdict}{'; event ' + ', '.join(n['events']) if n['events'] else ''}"


def measure(workdir: str | Path, unshifted: int = 20, rows: int = 400, shares=(0.05, 0.1, 0.2, 0.3),
            per_share: int = 3) -> dict:
    """docs/monitoring.md's figures, on the demo's first model (DIR/summary.json) at the shipped thresholds:
    false alarms on `unshifted` fresh batches, the detection rate per shift share, seconds per 1,000 rows on two
    torch threads (the reference observed once, as the nightly monitor of one model does), written to
    DIR/measure.json."""
    from ..demo_data import ticket_batch

    workdir = Path(workdir).resolve()
    summary = json.loads((workdir / "summary.json").read_text())
    first = summary["model"]
    with demo_hub(workdir, demo_seed, orgs=WRITERS):  # first: the HF clients read HF_ENDPOINT when imported
        import torch

        from ..doors import hub
        from ..kinds import kind_for
        from ..monitor.assess import Rows, assess
        from ..monitor.lineage import reference_of, rows_of
        from ..monitor.settings import Thresholds
        from ..stages.facts import read_facts

        torch.set_num_threads(2)
        th = Thresholds()
        from huggingface_hub import HfApi

        model = hub.pin(first["repo_id"], "model", first["sha"], "model")
        ref = reference_of(model)
        # The data the model was trained and tested on (a run of the demo before seeded_revision recorded the
        # repo's empty first commit in the card; `datasets` then read its cache).
        seeded = seeded_revision(HfApi())
        ref = ref.model_copy(update={"dataset": ref.dataset.model_copy(update={"sha": seeded, "revision": seeded})})
        model_dir = hub.model_dir(model)
        facts = read_facts(model_dir)
        monitor = kind_for(facts.task).monitor
        reference = rows_of(hub.load_dataset_at(ref.dataset, None)[ref.split], "text")

        def run(batch):
            return assess(monitor, model_dir, facts, reference, Rows(texts=[t for t, _ in batch],
                          labels=[lab for _, lab in batch]), ref.metrics, th)

        run(ticket_batch(rows, seed=1))  # observes (and caches) the reference: not part of the timings below
        quiet = [run(ticket_batch(rows, seed=5000 + i)) for i in range(unshifted)]
        detected = {}
        for share in shares:
            reports = [run(ticket_batch(rows, seed=6000 + 10 * i + int(share * 100), shift=share))
                       for i in range(per_share)]
            detected[str(share)] = {"drift": sum(r.drift for r in reports) / per_share,
                                    "degraded": sum(r.degraded for r in reports) / per_share,
                                    "alarms": sorted({a.name for r in reports for a in r.alarms()})}
        start = time.perf_counter()
        run(ticket_batch(1000, seed=7000))
        per_1000 = time.perf_counter() - start
        held_out = ticket_batch(rows, seed=3000, shift=1.0)  # before_after's held-out tickets of the new line
        accuracy = {"published": _accuracy(monitor, model_dir, facts, held_out)}
        retrain = summary.get("retrain")
        if retrain:  # the retrained checkpoint, published or not
            run_summary = json.loads((workdir / "store" / "runs" / retrain["flow_run_id"] / "summary.json").read_text())
            accuracy["retrained"] = _accuracy(monitor, run_summary["checkpoint"]["uri"], facts, held_out)
    out = {"unshifted_batches": unshifted, "rows": rows,
           "false_alarms": sum(r.drift or r.degraded for r in quiet),
           "false_alarm_signals": sorted({a.name for r in quiet for a in r.alarms()}),
           "min_p": {n: min(s.value for r in quiet for s in r.scores if s.name == n)
                     for n in ("label_chi2_p", "input_tokens_ks_p", "embedding_mmd_p")},
           "max_effect": {n: max(s.value for r in quiet for s in r.scores if s.name == n)
                          for n in ("label_psi", "confidence_drop", "low_confidence_rise", "unknown_word_rise")},
           "detection": detected, "seconds_per_1000_rows": round(per_1000, 2),
           "held_out_new_line_accuracy": accuracy}
    (workdir / "measure.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


def _accuracy(monitor, model_dir: str, facts, rows: list[tuple[str, str]]) -> float:
    probs = monitor.observe(model_dir, facts, [t for t, _ in rows])["probs"]
    names = list(facts.label_names)
    return round(sum(names[i] == lab for i, (_, lab) in zip(probs.argmax(1), rows)) / len(rows), 4)


if __name__ == "__main__":  # python -m hubflow.ops.demo_drift measure DIR
    if len(sys.argv) != 3 or sys.argv[1] != "measure":
        sys.exit("usage: python -m hubflow.ops.demo_drift measure DIR  (DIR: a finished drift demo's work dir)")
    measure(sys.argv[2])
