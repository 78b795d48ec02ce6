"""The real multi-worker topology on loopback, as the README describes it for real machines:

    prefect server start (SQLite)   ← API, UI, automations
    ├── cpu pool: 1 process worker  → hubflow-pipeline (pin, pull, preprocess, evaluate, publish)
    └── gpu pool: 2 process workers → hubflow-train, hubflow-predict (dispatched with run_deployment; batch
                                      inference fans out into one predict run per worker)
    moto S3 server                  ← the only shared storage: artifact store + Prefect results
    localhub                        ← the Hub; its webhook → hubflow webhooks serve → Prefect event → retrain

Each worker has its own working directory and HF_HOME. Deployed from deployments/prefect.yaml, unmodified.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from localhub import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUCKET = "hubflow"


class Procs:
    """Processes this test starts, each in its own session; stopped by pid (group), never by name."""

    def __init__(self, logs: Path):
        self.logs, self.procs = logs, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], env: dict, cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(cmd, env=env, cwd=cwd or ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop(self, name: str | None = None) -> None:
        for n, proc in list(self.procs):
            if name is not None and n != name:
                continue
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.procs.remove((n, proc))

    def tail(self, name: str, n: int = 60) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up waiting for {what} after {timeout}s")


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def topology(localhub, tmp_path_factory):
    """Start moto, a Prefect server, the pools, the deployments and three workers. Yields the env and handles."""
    tmp = tmp_path_factory.mktemp("topology")
    procs = Procs(tmp / "logs")
    s3_port, api_port, hook_port = free_port(), free_port(), free_port()
    s3_url, api_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{api_port}/api"
    secret = uuid.uuid4().hex
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK="remote-file-system/hubflow-results",
        PREFECT_LOGGING_EXTRA_LOGGERS="hubflow",
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=s3_url,
        HF_TOKEN=localhub.token("alice"),
        HUBFLOW_STORE=f"s3://{BUCKET}/store",
        HUBFLOW_WEBHOOK_SECRET=secret,
    )
    try:
        procs.start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], base)
        server_env = {**base, "PREFECT_HOME": str(tmp / "server-home")}
        procs.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                       "--port", str(api_port)], server_env)
        wait_for(lambda: _up(f"{s3_url}/"), 60, "moto")
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_url}, key="testing", secret="testing").mkdir(BUCKET)
        wait_for(lambda: _up(f"{api_url}/health"), 180, "prefect server", interval=1)
        setup = f"""
from prefect.filesystems import RemoteFileSystem
RemoteFileSystem(basepath="s3://{BUCKET}/prefect-results", settings={{"key": "testing", "secret": "testing",
    "client_kwargs": {{"endpoint_url": "{s3_url}"}}}}).save("hubflow-results", overwrite=True)
"""
        subprocess.run([sys.executable, "-c", setup], env=base, check=True, cwd=ROOT)
        subprocess.run([str(BIN / "hubflow"), "pools", "up"], env=base, check=True, cwd=ROOT)
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file",
                                 "deployments/prefect.yaml", "--all"], env=base, cwd=ROOT, capture_output=True,
                                text=True)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        for name, pool in (("cpu-1", "cpu"), ("gpu-1", "gpu"), ("gpu-2", "gpu")):
            home = tmp / name
            home.mkdir()
            env = {**base, "HF_HOME": str(home / "hf_home"), "HUBFLOW_MODEL_CACHE": str(home / "models")}
            # One run at a time per gpu host, as the README deploys them: a second part goes to the other worker.
            limit = ["--limit", "1"] if pool == "gpu" else []
            procs.start(name, [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name,
                               "--type", "process", *limit], env, cwd=home)
        yield {"env": base, "procs": procs, "api_url": api_url, "s3_url": s3_url, "secret": secret,
               "hook_port": hook_port, "tmp": tmp}
    finally:
        procs.stop()


def _s3(topology):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": topology["s3_url"]}, key="testing", secret="testing")


def _client(topology):
    from prefect.client.orchestration import SyncPrefectClient

    client = SyncPrefectClient(topology["api_url"])
    client.__enter__()
    return client


def _runs_of(client, flow_name: str, deployment: str | None = None):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

    kwargs = {"flow_filter": FlowFilter(name=FlowFilterName(any_=[flow_name]))}
    if deployment:
        kwargs["deployment_filter"] = DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
    return client.read_flow_runs(**kwargs)


@pytest.fixture(scope="module")
def pipeline_run(topology, localhub, tmp_path_factory):
    """Publish a tiny model and the support-tickets dataset, then run hubflow-pipeline/pipeline through the server."""
    from huggingface_hub import HfApi

    from tests.tiny import push_demo_dataset, push_tiny_bert

    alice = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    owner = HfApi(endpoint=localhub.url, token=localhub.token("hubflow"))
    tag = uuid.uuid4().hex[:6]
    model_repo = f"alice/topology-bert-{tag}"
    push_tiny_bert(alice, model_repo, tmp_path_factory.mktemp("bert"), num_labels=4)
    push_demo_dataset(owner, "hubflow/support-tickets", tmp_path_factory.mktemp("tickets"), exist_ok=True)
    config = {
        "task": "text-classification",  # the run form (and so the server) asks for the task kind
        "model": {"repo_id": model_repo},
        "data": {"source": "hubflow/support-tickets", "max_train_samples": 160, "max_eval_samples": 40,
                 "max_test_samples": 60},
        "preprocess": {"max_length": 32},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "checkpoint_every_steps": 5},
        "inference": {"batch_size": 16, "shard_size": 25},
        "publish": {"enabled": True, "repo_id": f"alice/topology-published-{tag}"},
        "execution": {"mode": "pools", "timeout_seconds": 900},
        "artifact_store": topology["env"]["HUBFLOW_STORE"],
    }
    script = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("hubflow-pipeline/pipeline", parameters={"config": json.loads(sys.argv[1])}, timeout=1200,
                     poll_interval=2)
print(json.dumps({"id": str(run.id), "state": run.state.name}))
"""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(config)], env=topology["env"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    logs = {n: topology["procs"].tail(n) for n in ("cpu-1", "gpu-1", "gpu-2")}
    assert run["state"] == "Completed", json.dumps(logs, indent=1)[-6000:]
    return {"id": run["id"], "model_repo": model_repo, "published_repo": config["publish"]["repo_id"]}


def _result(topology, run_id: str):
    """The run's PipelineResult, read from its summary in the shared store."""
    from hubflow.refs import PipelineResult

    path = f"{topology['env']['HUBFLOW_STORE']}/runs/{run_id}/summary.json"
    return PipelineResult.model_validate_json(_s3(topology).cat_file(path))


def test_stages_run_on_the_right_pools(topology, pipeline_run):
    client = _client(topology)
    parent = client.read_flow_run(pipeline_run["id"])
    assert parent.work_pool_name == "cpu"
    train = [r for r in _runs_of(client, "hubflow-train") if r.parent_task_run_id]
    predict = [r for r in _runs_of(client, "hubflow-predict") if r.parent_task_run_id]
    assert train and predict
    for child in train + predict:
        assert child.work_pool_name == "gpu" and child.state.is_completed(), (child.name, child.work_pool_name)
    result = _result(topology, pipeline_run["id"])
    # Every output lives in the shared S3 store, none on a worker's disk.
    s3 = _s3(topology)
    for uri in (result.raw.uri, result.tokenized.uri, result.checkpoint.uri, result.predictions.uri,
                result.evaluation.uri, result.summary_uri):
        assert uri.startswith("s3://") and s3.exists(uri), uri


def _worker_of(client, flow_run_id) -> str:
    """The worker that started a flow run, from its `prefect.worker.submitted-flow-run` event."""
    from prefect.events.filters import EventFilter, EventNameFilter

    page = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.worker.submitted-flow-run"])),
                              limit=50)
    events = list(page.events)
    while page.next_page:
        page = client.read_events_page(page.next_page)
        events += page.events
    names = {e.resource["prefect.resource.name"] for e in events
             if any(r.id == f"prefect.flow-run.{flow_run_id}" for r in e.related)}
    assert len(names) == 1, names
    return names.pop()


def _parts_of(client, flow_run_id: uuid.UUID):
    """The predict runs a flow run dispatched (one per part)."""
    return [r for r in _runs_of(client, "hubflow-predict")
            if r.parent_task_run_id and client.read_task_run(r.parent_task_run_id).flow_run_id == flow_run_id]


def _merged_row_ids(topology, predictions) -> tuple[dict, list[int]]:
    """The merged manifest and the row ids of its shards, in order."""
    import pyarrow.parquet as pq

    s3 = _s3(topology)
    manifest = json.loads(s3.cat_file(f"{predictions.uri}/manifest.json"))
    return manifest, [i for s in manifest["shards"]
                      for i in pq.read_table(s3.open(f"{predictions.uri}/{s['file']}")).column("row_id").to_pylist()]


def _start_batch(topology, pipeline_run, rows: int, shard_size: int) -> uuid.UUID:
    """A run of hubflow-batch-inference/nightly with the published model over `rows` test rows (not waited for)."""
    params = {
        "model_repo_id": pipeline_run["published_repo"],
        "data": {"source": "hubflow/support-tickets", "test_split": "test", "max_test_samples": rows},
        "inference": {"batch_size": 16, "shard_size": shard_size},
        "execution": {"mode": "pools", "timeout_seconds": 600},
        "artifact_store": topology["env"]["HUBFLOW_STORE"],
    }
    script = """
import json, sys
from prefect.deployments import run_deployment
print(run_deployment("hubflow-batch-inference/nightly", parameters=json.loads(sys.argv[1]), timeout=0).id)
"""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(params)], env=topology["env"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uuid.UUID(proc.stdout.strip().splitlines()[-1])


def _batch_result(topology, client, batch_id: uuid.UUID):
    """Wait for the batch run to end; its BatchResult (from the summary in the shared store)."""
    from hubflow.refs import BatchResult

    wait_for(lambda: client.read_flow_run(batch_id).state.is_final(), 600, "the batch run", interval=2)
    state = client.read_flow_run(batch_id).state
    assert state.is_completed(), (state.name, state.message, topology["procs"].tail("cpu-1"))
    store = topology["env"]["HUBFLOW_STORE"]
    return BatchResult.model_validate_json(_s3(topology).cat_file(f"{store}/batch/{batch_id}/summary.json"))


def test_the_pipelines_batch_inference_fans_out(topology, pipeline_run):
    """60 test rows in 3 shards, 2 gpu workers online: two predict runs of this pipeline run, one part each; the
    merged predictions hold every row once, in input order."""
    client = _client(topology)
    parts = _parts_of(client, uuid.UUID(pipeline_run["id"]))
    assert sorted((r.parameters["part"], r.parameters["parts"]) for r in parts) == [(0, 2), (1, 2)]
    assert all(r.state.is_completed() and r.work_pool_name == "gpu" for r in parts)
    predictions = _result(topology, pipeline_run["id"]).predictions
    manifest, row_ids = _merged_row_ids(topology, predictions)
    assert manifest["parts"] == 2 and [s["index"] for s in manifest["shards"]] == [0, 1, 2]
    assert row_ids == list(range(60)) and predictions.rows == 60


def test_a_batch_job_runs_its_parts_on_both_gpu_workers(topology, pipeline_run):
    """Nightly batch inference, 40 rows in 4 shards, with both gpu workers idle: its two parts are completed by two
    different workers (from each worker's submitted-flow-run event), and rows out = rows in, in order.
    (Right after a training the worker that trained may still be busy: its flow process lingers on exit.)"""
    client = _client(topology)
    batch_id = _start_batch(topology, pipeline_run, rows=40, shard_size=10)
    result = _batch_result(topology, client, batch_id)
    parts = _parts_of(client, batch_id)
    assert sorted(r.parameters["part"] for r in parts) == [0, 1] and all(r.state.is_completed() for r in parts)
    assert {_worker_of(client, r.id) for r in parts} == {"gpu-1", "gpu-2"}
    manifest, row_ids = _merged_row_ids(topology, result.predictions)
    assert manifest["parts"] == 2 and row_ids == list(range(40)) and result.predictions.rows == 40


def test_a_crashed_part_is_retried_alone(topology, pipeline_run):
    """Nightly batch inference, 48 rows in 4 shards in 2 parts: part 0's process is killed (SIGKILL) as soon as a
    worker has started it. That part alone runs again (on whichever worker is free), part 1 runs once, and the
    merged predictions still hold every row once, in order."""
    client = _client(topology)
    batch_id = _start_batch(topology, pipeline_run, rows=48, shard_size=12)

    def part_0_started():
        started = [r for r in _parts_of(client, batch_id) if r.parameters["part"] == 0 and r.infrastructure_pid]
        return started[0] if started else None

    victim = wait_for(part_0_started, 300, "part 0 to start on a gpu worker", interval=0.2)
    os.kill(int(victim.infrastructure_pid.rsplit(":", 1)[-1]), signal.SIGKILL)  # our own worker's child, by pid
    result = _batch_result(topology, client, batch_id)
    runs = _parts_of(client, batch_id)
    assert {k: sorted(r.state.type.value for r in runs if r.parameters["part"] == k) for k in (0, 1)} == {
        0: ["COMPLETED", "CRASHED"], 1: ["COMPLETED"]}
    manifest, row_ids = _merged_row_ids(topology, result.predictions)
    assert manifest["parts"] == 2 and [s["rows"] for s in manifest["shards"]] == [12, 12, 12, 12]
    assert row_ids == list(range(48)) and result.predictions.rows == 48


def test_the_model_is_published_on_the_hub(topology, pipeline_run, localhub):
    from huggingface_hub import HfApi

    result = _result(topology, pipeline_run["id"])
    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    info = api.model_info(pipeline_run["published_repo"])
    assert result.published.model.sha == info.sha
    assert "model.safetensors" in {s.rfilename for s in info.siblings}


def test_a_tiny_llm_job_runs_on_the_gpu_pool(topology, pipeline_run, localhub, tmp_path_factory):
    """task: causal-lm through the same deployments: LoRA training and batch generation run on gpu workers, the
    merged model and the adapter land in the shared store, and the run's generations are scored."""
    from huggingface_hub import HfApi

    from tests.tiny import push_chat_dataset, push_tiny_llama

    alice = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    push_tiny_llama(alice, f"alice/topology-llama-{tag}", tmp_path_factory.mktemp("llama"))
    push_chat_dataset(alice, f"alice/topology-chat-{tag}", tmp_path_factory.mktemp("chat"), {"train": 96, "test": 12})
    config = {
        "task": "causal-lm",
        "model": {"repo_id": f"alice/topology-llama-{tag}"},
        "data": {"source": f"alice/topology-chat-{tag}", "max_eval_samples": 12},
        "preprocess": {"max_length": 96},
        "train": {"method": "lora", "epochs": 1, "batch_size": 16, "learning_rate": 3e-2, "lora": {"r": 4}},
        "inference": {"batch_size": 6, "shard_size": 6, "generation": {"max_new_tokens": 6}},
        "execution": {"mode": "pools", "timeout_seconds": 900},
        "artifact_store": topology["env"]["HUBFLOW_STORE"],
    }
    script = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("hubflow-pipeline/pipeline", parameters={"config": json.loads(sys.argv[1])}, timeout=1200,
                     poll_interval=2)
print(json.dumps({"id": str(run.id), "state": run.state.name}))
"""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(config)], env=topology["env"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["state"] == "Completed", {n: topology["procs"].tail(n) for n in ("cpu-1", "gpu-1", "gpu-2")}
    client = _client(topology)
    children = [r for name in ("hubflow-train", "hubflow-predict") for r in _runs_of(client, name)
                if r.parent_task_run_id
                and client.read_task_run(r.parent_task_run_id).flow_run_id == uuid.UUID(run["id"])]
    # one train run; generation over 2 shards fans out into one predict run per gpu worker
    train, predict = ([r for r in children if "part" not in r.parameters],
                      [r for r in children if "part" in r.parameters])
    assert len(train) == 1 and sorted(r.parameters["part"] for r in predict) == [0, 1]
    assert all(r.work_pool_name == "gpu" and r.state.is_completed() for r in children)
    result = _result(topology, run["id"])
    assert result.checkpoint.facts.task == "causal-lm" and result.checkpoint.adapter_uri.startswith("s3://")
    s3 = _s3(topology)
    assert s3.exists(f"{result.checkpoint.adapter_uri}/adapter_model.safetensors")
    assert result.evaluation.metrics["test_rows"] == 12 and result.evaluation.metrics["perplexity"] > 0


def test_a_new_dataset_revision_starts_exactly_one_retrain(topology, pipeline_run, localhub, tmp_path):
    from huggingface_hub import HfApi

    procs, env = topology["procs"], topology["env"]
    for worker in ("cpu-1", "gpu-1", "gpu-2"):  # the retrain run only has to be created, not executed
        procs.stop(worker)
    port = topology["hook_port"]
    procs.start("receiver", [str(BIN / "hubflow"), "webhooks", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--state-dir", str(tmp_path / "hook-state")], env)
    wait_for(lambda: _up(f"http://127.0.0.1:{port}/health"), 60, "webhook receiver")
    hook_url = f"http://127.0.0.1:{port}/webhooks/hub"
    register_env = {**env, "HF_TOKEN": localhub.token("hubflow")}
    subprocess.run([str(BIN / "hubflow"), "webhooks", "register", "--url", hook_url, "--watch",
                    "dataset:hubflow/support-tickets"], env=register_env, check=True, cwd=ROOT)
    bad = httpx.post(hook_url, json={}, headers={"X-Webhook-Secret": "wrong"})
    assert bad.status_code == 401

    client = _client(topology)
    before = len(_runs_of(client, "hubflow-pipeline", "retrain"))
    owner = HfApi(endpoint=localhub.url, token=localhub.token("hubflow"))
    sha = owner.upload_file(path_or_fileobj=b"# a new revision\n", path_in_repo="NOTES.md",
                            repo_id="hubflow/support-tickets", repo_type="dataset").oid

    def retrains():
        runs = _runs_of(client, "hubflow-pipeline", "retrain")
        return runs if len(runs) > before else None

    runs = wait_for(retrains, 60, "the retrain run")
    time.sleep(3)  # a duplicate would show up here
    runs = _runs_of(client, "hubflow-pipeline", "retrain")
    new = [r for r in runs if r.parameters["config"]["data"]["revision"] == sha]
    assert len(runs) - before == 1 and len(new) == 1, [r.parameters["config"]["data"]["revision"] for r in runs]


def test_schedules_are_on_the_server(topology):
    client = _client(topology)
    deployment = client.read_deployment_by_name("hubflow-pipeline/retrain")
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "0 3 * * 1" and schedule.schedule.timezone == "Europe/Berlin"
    nightly = client.read_deployment_by_name("hubflow-batch-inference/nightly")
    assert nightly.schedules[0].schedule.cron == "30 1 * * *"
