"""Training across machines (docs/multinode.md), as the pods of the multi-node job run it, on this CPU machine.

Two "pods" are two process trees started with the environment the kubernetes template gives its pods
(HUBFLOW_WORLD, HUBFLOW_RDZV_ENDPOINT, HUBFLOW_JOB_NAME, JOB_COMPLETION_INDEX), each with its own HF cache, running
the pods' command `python -m hubflow.ops.nodes <the flow run's command>`. Pod 0's "flow run" is what the train flow does
(pull the base model from the Hub, train_model); torchrun's two ranks meet over gloo on 127.0.0.1. Then the template
itself: created as a kubernetes work pool on a Prefect server, and rendered for a flow run the way a worker does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hubflow.config import TrainConfig
from hubflow.doors import store
from hubflow.refs import CheckpointRef, PinnedRepo
from hubflow.stages.launch import World
from localhub import free_port
from tests.tiny import LABELS, make_tiny_tokenized, push_tiny_bert

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"train": 96, "validation": 32, "test": 16}
# 96 rows in batches of 8: 12 batches an epoch, dealt out to 2 ranks: 6 optimizer steps (12 on one process).
CFG = TrainConfig(epochs=1, batch_size=8, eval_batch_size=16, learning_rate=5e-3, warmup_ratio=0.0, seed=0,
                  checkpoint_every_steps=1000)
STEPS_ON_TWO = 6

# Pod 0's flow run, reduced to what hubflow-train does: pull-model, then train (whose stage sees HUBFLOW_WORLD).
FLOW_RUN = """
import logging, sys
from hubflow.config import TrainConfig
from hubflow.doors import hub
from hubflow.refs import PinnedRepo, TokenizedRef
from hubflow.stages.train import train_model
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
tokenized, base = TokenizedRef.model_validate_json(sys.argv[1]), PinnedRepo.model_validate_json(sys.argv[2])
ref = train_model(tokenized, hub.model_dir(base), base, TrainConfig.model_validate_json(sys.argv[3]), sys.argv[4],
                  on_progress=lambda f, m: print(f"progress {f:.2f}: {m}", flush=True))
print("checkpoint", ref.model_dump_json(), flush=True)
"""


def _pod_env(index: int, home: Path, port: int, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "HUBFLOW_")) and k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(
        HUBFLOW_WORLD="2x1", HUBFLOW_RDZV_ENDPOINT=f"127.0.0.1:{port}", HUBFLOW_JOB_NAME="train-test-job",
        JOB_COMPLETION_INDEX=str(index),
        HF_HOME=str(home / "hf_home"), HF_TOKEN=token,
        OMP_NUM_THREADS="1",  # two "machines" share this machine's 2 cores
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture(scope="module")
def two_nodes(localhub, tmp_path_factory):
    """Pods 1 and 0 of a 2-node job (pod 1 started first: it waits for pod 0's rendezvous) -> their results."""
    from huggingface_hub import HfApi

    tmp = tmp_path_factory.mktemp("multinode")
    token = localhub.token("alice")
    repo_id = f"alice/multinode-bert-{uuid.uuid4().hex[:8]}"
    sha = push_tiny_bert(HfApi(endpoint=localhub.url, token=token), repo_id, tmp / "bert")
    base = PinnedRepo(repo_id=repo_id, repo_type="model", revision="main", sha=sha)
    tokenized = make_tiny_tokenized(tmp / "tokenized", tmp / "bert", sizes=SIZES)
    out = str(tmp / "store" / "train" / "run")
    command = [sys.executable, "-c", FLOW_RUN, tokenized.model_dump_json(), base.model_dump_json(),
               CFG.model_dump_json(), out]
    port = free_port()
    pods, logs = {}, {}
    started = time.monotonic()
    try:
        for index in (1, 0):
            home = tmp / f"pod-{index}"
            home.mkdir()
            logs[index] = home / "log.txt"
            with open(logs[index], "wb") as log:
                pods[index] = subprocess.Popen(
                    [sys.executable, "-m", "hubflow.ops.nodes", *command], env=_pod_env(index, home, port, token),
                    cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            if index == 1:
                time.sleep(3)  # pod 1 is up before pod 0 reaches its train stage, as on a cluster
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and any(p.poll() is None for p in pods.values()):
            time.sleep(0.5)
        codes = {i: p.poll() for i, p in pods.items()}  # None: still running at the deadline (killed below)
    finally:
        for p in pods.values():
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    return {"codes": codes, "logs": {i: f.read_text(errors="replace") for i, f in logs.items()}, "out": out,
            "tmp": tmp, "base": base, "seconds": time.monotonic() - started}


def test_two_nodes_train_one_model_together(two_nodes):
    logs = two_nodes["logs"]
    assert two_nodes["codes"] == {0: 0, 1: 0}, f"pod 0:\n{logs[0][-3000:]}\npod 1:\n{logs[1][-3000:]}"
    # Pod 0 ran the flow run, whose train stage launched torchrun as node 0; pod 1 waited, then joined.
    assert "torchrun: 2 nodes x 1 processes, rendezvous 127.0.0.1:" in logs[0]
    assert "waiting for node 0's rendezvous" in logs[1]
    # One rank per pod, and between them the whole world of two.
    ranks = {i: re.findall(r"rank (\d) of 2 \(node \d, local rank 0\): training into (\S+)", logs[i]) for i in (0, 1)}
    assert [len(r) for r in ranks.values()] == [1, 1], ranks
    assert sorted(r[0][0] for r in ranks.values()) == ["0", "1"]
    # Pod 1 knew nothing of the run: it took the arguments from node 0 and pulled the base model into its own cache.
    assert ranks[1][0][1] == two_nodes["out"]
    pulled = two_nodes["tmp"] / "pod-1" / "hf_home" / "hub"
    assert (pulled / f"models--{two_nodes['base'].repo_id.replace('/', '--')}" / "snapshots"
            / two_nodes["base"].sha / "model.safetensors").exists()

    ref = CheckpointRef.model_validate_json(
        next(line for line in logs[0].splitlines() if line.startswith("checkpoint ")).split(" ", 1)[1])
    assert ref == CheckpointRef.model_validate(store.read_json(store.join(two_nodes["out"], "checkpoint_ref.json")))
    assert ref.hardware.endswith("x2 processes (fp32)"), ref.hardware
    # The batches were dealt out to two ranks: half the optimizer steps one process takes, each on 2 x 8 rows.
    history = store.read_json(ref.history_uri)
    assert history["total_steps"] == STEPS_ON_TWO
    assert [s["step"] for s in history["steps"]] == list(range(1, STEPS_ON_TWO + 1))
    assert [e["step"] for e in history["evals"]] == [STEPS_ON_TWO]


def test_the_checkpoint_loads_and_predicts(two_nodes):
    from hubflow.kinds.text_classification.model import predict_texts

    assert two_nodes["codes"] == {0: 0, 1: 0}
    ref = CheckpointRef.model_validate(store.read_json(store.join(two_nodes["out"], "checkpoint_ref.json")))
    rows = predict_texts(ref.uri, ["the striker scored a goal", "rain and storm today", "the bank stock price"])
    assert len(rows) == 3 and all(r["label"] in LABELS for r in rows)
    assert all(abs(sum(r["probs"]) - 1) < 1e-5 for r in rows)
    assert json.loads(Path(ref.uri, "hubflow.json").read_text())["label_names"] == LABELS


def test_one_machine_launches_one_process_per_device(tmp_path, monkeypatch):
    """A multi-GPU worker's training (the stage launches a rank per device), here two CPU processes: torchrun
    --standalone; and the one decision of how a training runs."""
    from hubflow.stages.launch import World, launch, ranks_to_launch
    from tests.tiny import make_tiny_bert

    for var in ("HUBFLOW_WORLD", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model_dir = make_tiny_bert(tmp_path / "bert")
    tokenized = make_tiny_tokenized(tmp_path / "tokenized", model_dir, sizes=SIZES)
    base = PinnedRepo(repo_id="tiny/bert", repo_type="model", revision="main", sha="0" * 40)
    lines: list[str] = []
    assert (ranks_to_launch(None, 0), ranks_to_launch(None, 1), ranks_to_launch(None, 2)) == (0, 0, 2)
    assert ranks_to_launch(World(3, 2, 0, "127.0.0.1:29500", "job"), 1) == 2  # node 0 of three nodes x 2
    ref = launch(tokenized, str(model_dir), base, CFG, str(tmp_path / "run"), 2, False, lines.append)
    assert ref.hardware.endswith("x2 processes (fp32)"), "\n".join(lines[-40:])
    # (The two ranks share one pipe: a line may start with the other's progress bar.)
    assert sorted(re.findall(r"rank (\d) of 2 \(node", "\n".join(lines))) == ["0", "1"]
    assert store.read_json(ref.history_uri)["total_steps"] == STEPS_ON_TWO


# ---- the template, on a Prefect server ------------------------------------------------------------------------------

def _render_for_flow_run(pool_name: str, job_variables: dict):
    """What a kubernetes worker builds for a run of a deployment on the pool: Prefect's own resolution of the
    base job template (defaults, deployment and run job variables, the flow run's env and command)."""
    from prefect.client.orchestration import get_client
    from prefect.workers.base import BaseJobConfiguration

    class KubernetesJob(BaseJobConfiguration):  # the fields of prefect-kubernetes' job configuration
        job_manifest: dict
        namespace: str
        cluster_config: dict | None = None
        job_watch_timeout_seconds: int | None = None
        pod_watch_timeout_seconds: int = 60
        stream_output: bool = True

    async def go():
        async with get_client() as client:
            pool = await client.read_work_pool(pool_name)
            flow_id = await client.create_flow_from_name("hubflow-train")
            deployment_id = await client.create_deployment(
                flow_id=flow_id, name=f"multinode-{uuid.uuid4().hex[:6]}", work_pool_name=pool_name,
                work_queue_name="default", entrypoint="flows/train.py:train_flow", job_variables=job_variables)
            run = await client.create_flow_run_from_deployment(deployment_id)
            bad = None
            try:
                await client.create_flow_run_from_deployment(deployment_id, job_variables={"nodes": 0})
            except Exception as e:  # the server refuses a run whose job variables break the pool's schema
                bad = e
            config = await KubernetesJob.resolve_for_flow_run(run, client=client, work_pool=pool, worker_name="k8s")
            return run, config, bad

    return asyncio.run(go())


def test_the_multinode_template_validates_and_renders_an_indexed_torchrun_job(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from hubflow.ops.pools import PoolError, pools_up, template

    base = template("kubernetes", "gpu", multinode=True)
    name = f"gpu-multinode-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes", base_job_template=base))
        assert client.read_work_pool(name).base_job_template == base  # the server validated and kept it
    with pytest.raises(PoolError, match="needs --type kubernetes"):
        pools_up("process", multinode=True)

    run, job, refused = _render_for_flow_run(name, {"nodes": 3, "gpu_count": 8, "image": "registry/hubflow:cuda"})
    assert refused is not None and "nodes" in str(refused)
    spec = job.job_manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}  # the flow run's pod decides
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "hubflow-nodes"
    assert spec["template"]["metadata"]["labels"] == {"hubflow.io/multinode": "hubflow-nodes"}  # the Service's selector
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "hubflow.ops.nodes"]
    assert container["image"] == "registry/hubflow:cuda"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    env = container["env"]
    assert all(isinstance(e.get("value", ""), str) for e in env)  # Kubernetes takes strings only
    assert {e["name"]: e.get("value") for e in env} == {
        "HUBFLOW_WORLD": "3x8", "HUBFLOW_JOB_NAME": None,
        "HUBFLOW_RDZV_ENDPOINT": "$(HUBFLOW_JOB_NAME)-0.hubflow-nodes:29400"}
    assert env[1]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    # The worker's own env (merged in front of the list above) tells every pod which flow run to follow.
    assert job.env["PREFECT__FLOW_RUN_ID"] == str(run.id) and job.env["HUBFLOW_WORKER_KIND"] == "gpu"

    # What pod 2 of a job named train-abc then sees, after Kubernetes fills in $(HUBFLOW_JOB_NAME):
    seen = {"HUBFLOW_JOB_NAME": "train-abc", "JOB_COMPLETION_INDEX": "2"}
    for e in env:
        if "value" in e:
            seen[e["name"]] = e["value"].replace("$(HUBFLOW_JOB_NAME)", seen["HUBFLOW_JOB_NAME"])
    world = World.from_env(seen)
    assert world == World(nodes=3, procs_per_node=8, node_rank=2, endpoint="train-abc-0.hubflow-nodes:29400",
                          rdzv_id="train-abc")
    cmd = world.torchrun()
    assert cmd[cmd.index("--nnodes") + 1] == "3" and cmd[cmd.index("--nproc-per-node") + 1] == "8"
    assert cmd[cmd.index("--rdzv-backend") + 1] == "c10d" and "is_host=0" in cmd
    with get_client(sync_client=True) as client:
        client.delete_work_pool(name)


def test_a_joining_pod_prefetches_the_model_and_exits_once_its_flow_run_is_over(prefect_api, localhub, tmp_path):
    """Pod i pulls the run's base model while node 0 gets ready; and a run that never trains here (cached, or failed
    before training) does not keep it waiting forever."""
    from huggingface_hub import HfApi
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Completed

    token = localhub.token("alice")
    repo_id = f"alice/multinode-prefetch-{uuid.uuid4().hex[:8]}"
    sha = push_tiny_bert(HfApi(endpoint=localhub.url, token=token), repo_id, tmp_path / "bert")
    base = PinnedRepo(repo_id=repo_id, repo_type="model", revision="main", sha=sha)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("hubflow-train")
        deployment_id = client.create_deployment(flow_id=flow_id, name=f"over-{uuid.uuid4().hex[:6]}")
        run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"base_model": base.model_dump(mode="json"), "allow_pickle": False})
        client.set_flow_run_state(run.id, Completed(), force=True)
    env = _pod_env(1, tmp_path, free_port(), token)  # nothing ever listens on that port
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT__FLOW_RUN_ID=str(run.id))
    done = subprocess.run([sys.executable, "-m", "hubflow.ops.nodes", "prefect", "flow-run", "execute"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"pulling {repo_id}@{sha[:10]} while node 0 gets ready" in done.stdout
    assert f"flow run {run.id} is over" in done.stdout
    assert (tmp_path / "hf_home" / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / sha
            / "model.safetensors").exists()
