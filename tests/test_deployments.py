"""deployments/prefect.yaml, the work pool templates and the batch inference flow, against Prefect's test server.

`hubflow pools up` and `prefect deploy` run as subprocesses, as an operator runs them (PREFECT_API_URL pointing at
the session's test server); the checks then read what the server holds: pools, deployments, parameter schemas,
schedules and automations, and fire the triggers with real events. The batch flow runs on a tiny BERT on localhub.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.tiny import push_parquet_dataset, push_tiny_bert, synthetic_rows

pytestmark = pytest.mark.usefixtures("prefect_api")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STORE = "s3://hubflow/store"
DEPLOYMENTS = {  # flow/deployment -> pool
    "hubflow-pipeline/pipeline": "cpu",
    "hubflow-pipeline/retrain": "cpu",
    "hubflow-sweep/demo": "cpu",
    "hubflow-train/gpu": "gpu",
    "hubflow-predict/gpu": "gpu",
    "hubflow-batch-inference/nightly": "cpu",
    "hubflow-batch-inference/re-embed": "cpu",
    "hubflow-publish/on-train-complete": "cpu",
    "hubflow-watch/sensor": "cpu",
    "hubflow-deploy-space/cpu": "cpu",
    "hubflow-deploy-space/on-model-merge": "cpu",
    "hubflow-monitor/published-model": "cpu",
}


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise TimeoutError(f"gave up waiting for {what} after {timeout}s")


@pytest.fixture(scope="module")
def cli_env(prefect_api, tmp_path_factory) -> dict[str, str]:
    """The environment an operator's shell would have: the API URL, the store, nothing else of Prefect's."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", HUBFLOW_STORE=STORE)
    env.pop("HUBFLOW_CODE_DIR", None)
    return env


@pytest.fixture(scope="module")
def deployed(cli_env, tmp_path_factory) -> dict[str, str]:
    """`hubflow pools up` twice (idempotent), then `prefect deploy --all`; returns {name: deployment id}."""
    up = subprocess.run(f"{BIN}/hubflow pools up && {BIN}/hubflow pools up", shell=True, env=cli_env, cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    first, second = up.stdout.splitlines()[:2], up.stdout.splitlines()[2:]
    assert [line.rsplit(": ", 1)[0] for line in first] == ["work pool 'cpu' (process)", "work pool 'gpu' (process)"]
    assert second == ["work pool 'cpu' (process): updated", "work pool 'gpu' (process): updated"]
    prefect_file = ROOT / "deployments" / "prefect.yaml"
    spec = yaml.safe_load(prefect_file.read_text())
    present = [d for d in spec["deployments"] if (ROOT / d["entrypoint"].split(":")[0]).exists()]
    if len(present) < len(spec["deployments"]):  # a flow another change adds is not there yet: deploy the rest
        prefect_file = tmp_path_factory.mktemp("deploy") / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump({**spec, "deployments": present}, sort_keys=False))
    deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(prefect_file),
                             "--all"], env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-4000:]
    from prefect.exceptions import ObjectNotFound

    ids = {}
    with _client() as client:
        for name in DEPLOYMENTS:
            try:
                ids[name] = str(client.read_deployment_by_name(name).id)
            except ObjectNotFound:
                pass
    return ids


def _deployment(deployed, name):
    if name not in deployed:
        pytest.skip(f"{name}: its flow file is not in this checkout yet")
    with _client() as client:
        return client.read_deployment(deployed[name])


# ---- pools ------------------------------------------------------------------------------------------------------


def test_pools_are_process_pools_with_their_kind_in_the_env(deployed):
    with _client() as client:
        for name in ("cpu", "gpu"):
            pool = client.read_work_pool(name)
            assert pool.type == "process"
            assert pool.base_job_template["variables"]["properties"]["env"]["default"]["HUBFLOW_WORKER_KIND"] == name


@pytest.mark.parametrize("pool_type", ["docker", "kubernetes"])
def test_container_templates_are_accepted_and_complete(deployed, pool_type):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import find_placeholders

    from hubflow.ops.pools import template

    with _client() as client:
        for kind in ("cpu", "gpu"):
            base = template(pool_type, kind)
            # The server validates the template (placeholders declared, defaults valid) on create.
            name = f"test-{pool_type}-{kind}-{uuid.uuid4().hex[:6]}"
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=base))
            assert client.read_work_pool(name).base_job_template == base
            client.delete_work_pool(name)
            names = {p.name for p in find_placeholders(base["job_configuration"])}
            assert names <= set(base["variables"]["properties"]), names - set(base["variables"]["properties"])
            defaults = {k: v.get("default") for k, v in base["variables"]["properties"].items()}
            assert defaults["env"]["HUBFLOW_CODE_DIR"] == "/opt/hubflow"
            if pool_type == "docker":
                requests = (defaults.get("container_create_kwargs") or {}).get("device_requests")
                assert (requests == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]) == (kind == "gpu")
            else:
                container = base["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
                limits = container.get("resources", {}).get("limits", {})
                assert (limits.get("nvidia.com/gpu") == "{{ gpu_count }}") == (kind == "gpu")
                if kind == "gpu":
                    assert defaults["gpu_count"] == 1


def test_pools_up_refuses_to_change_a_pools_type(deployed):
    from hubflow.ops.pools import PoolError, pools_up

    with pytest.raises(PoolError, match="exists with type 'process'"):
        pools_up("docker")


def test_gpu_limit_is_set_on_request_and_otherwise_left_alone(deployed):
    from prefect.client.schemas.actions import WorkPoolUpdate

    from hubflow.ops.pools import pools_up

    assert pools_up("process", gpu_limit=2) == {"cpu": "updated", "gpu": "updated"}
    pools_up("process")
    with _client() as client:
        assert (client.read_work_pool("cpu").concurrency_limit,
                client.read_work_pool("gpu").concurrency_limit) == (None, 2)
        client.update_work_pool("gpu", WorkPoolUpdate(concurrency_limit=None))
        assert client.read_work_pool("gpu").concurrency_limit is None


# ---- deployments ------------------------------------------------------------------------------------------------


def test_every_deployment_is_on_its_pool(deployed):
    for name, pool in DEPLOYMENTS.items():
        dep = _deployment(deployed, name)
        assert (dep.work_pool_name, dep.work_queue_name) == (pool, "default"), name


def test_pull_step_changes_into_the_code_dir_at_run_time(deployed, monkeypatch, tmp_path):
    """Unset HUBFLOW_CODE_DIR: the deploy-time checkout; set (an image, another host): that folder."""
    from prefect.deployments.steps.core import run_steps

    steps = _deployment(deployed, "hubflow-train/gpu").pull_steps
    assert "{{ code-dir.stdout }}" in str(steps) and f"${{HUBFLOW_CODE_DIR:-{ROOT}}}" in str(steps)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HUBFLOW_CODE_DIR", raising=False)
    asyncio.run(run_steps(steps, print_function=lambda *a, **k: None))
    assert Path.cwd() == ROOT
    monkeypatch.setenv("HUBFLOW_CODE_DIR", str(tmp_path))
    asyncio.run(run_steps(steps, print_function=lambda *a, **k: None))
    assert Path.cwd() == tmp_path


def test_pipeline_defaults_are_the_demo_recipe_in_pools_mode(deployed):
    from hubflow.config import PipelineConfig, load_recipe

    config = PipelineConfig.model_validate(_deployment(deployed, "hubflow-pipeline/pipeline").parameters["config"])
    assert config.execution.mode.value == "pools" and config.artifact_store == STORE
    demo = load_recipe(ROOT / "deployments" / "configs" / "demo.yaml")
    assert config.model_dump(exclude={"execution", "artifact_store"}) == demo.model_dump(
        exclude={"execution", "artifact_store"})
    retrain = _deployment(deployed, "hubflow-pipeline/retrain")
    retrain_config = PipelineConfig.model_validate(retrain.parameters["config"])
    # Retraining publishes through the chained publish deployment, so not in the run as well.
    assert not retrain_config.publish.enabled and not retrain_config.space.enabled
    assert retrain_config.publish.repo_id == config.publish.repo_id
    assert retrain_config.model_dump(exclude={"publish", "space"}) == config.model_dump(exclude={"publish", "space"})
    # One retrain at a time; a run that meets another waits for it (and then mostly hits the stage caches).
    assert retrain.global_concurrency_limit.limit == 1
    assert retrain.concurrency_options.collision_strategy.value == "ENQUEUE"


def test_parameter_schema_is_the_typed_config_and_the_server_enforces_it(deployed):
    import httpx

    from hubflow.kinds import DEFAULT_TASK, tasks

    dep = _deployment(deployed, "hubflow-pipeline/pipeline")
    schema = dep.parameter_openapi_schema
    # One flat typed form (hubflow.kinds.FlatForm; the code validates a union of the kinds' configs): `task` picks
    # the kind; each section has every installed kind's keys, a kind-only one marked with its kind and no default.
    form = schema["properties"]["config"]
    assert form["type"] == "object" and "oneOf" not in form and "anyOf" not in form
    task = form["properties"]["task"]
    assert set(task["enum"]) == set(tasks()) >= {"text-classification", "causal-lm", "sentence-embedding"}
    assert task["default"] == task["enum"][0] == DEFAULT_TASK and "task" in form["required"]
    sections = form["properties"]
    lr = sections["train"]["properties"]["learning_rate"]
    assert lr["description"] == "Peak learning rate of AdamW." and lr["default"] == 5e-5
    assert (lr["exclusiveMinimum"], lr["exclusiveMaximum"]) == (0, 1)
    assert sections["data"]["required"] == ["source"] and sections["data"]["additionalProperties"] is False
    label = sections["data"]["properties"]["label_column"]
    assert label["description"].startswith("(text-classification) Column holding the class") and "default" not in label
    assert sections["data"]["properties"]["anchor_column"]["description"].startswith("(sentence-embedding) ")
    lora = sections["train"]["properties"]["lora"]  # a kind-only nested model stays a typed object
    assert lora["type"] == "object" and lora["properties"]["r"]["type"] == "integer"
    assert lora["properties"]["r"]["description"] == "(causal-lm) Rank of the adapter matrices. Default: 16."
    method = sections["train"]["properties"]["method"]
    assert method["$ref"].rsplit("/", 1)[-1] in (schema.get("definitions") or schema.get("$defs"))
    assert sections["inference"]["properties"]["generation"]["properties"]["decoding"]
    gate = sections["publish"]["properties"]["gate"]["properties"]["metric"]  # the kinds' metrics, one select
    assert {"macro_f1", "perplexity", "ndcg_at_10"} <= set(gate["anyOf"][0]["enum"])
    bad = {**dep.parameters["config"], "train": {**dep.parameters["config"]["train"], "learning_rate": -1}}
    with _client() as client, pytest.raises(httpx.HTTPStatusError) as err:
        client.create_flow_run_from_deployment(dep.id, parameters={"config": bad})
    assert err.value.response.status_code in (409, 422)
    refusal = err.value.response.text
    assert "Validation failed for field 'config.train.learning_rate'" in refusal, refusal


@pytest.mark.parametrize("name, cron", [("hubflow-pipeline/retrain", "0 3 * * 1"),
                                        ("hubflow-batch-inference/nightly", "30 1 * * *"),
                                        ("hubflow-batch-inference/re-embed", "0 2 * * *")])
def test_cron_schedules_run_at_the_expected_times(deployed, name, cron):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.server.schemas.schedules import CronSchedule

    dep = _deployment(deployed, name)
    (schedule,) = dep.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (cron, "Europe/Berlin", True)
    start = dt.datetime.now(dt.timezone.utc)
    expected = asyncio.run(CronSchedule(cron=cron, timezone="Europe/Berlin").get_dates(n=3, start=start))
    with _client() as client:
        # The scheduler service does not run in the test server: ask the server to schedule, with its own cron code.
        client.request("POST", "/deployments/{id}/schedule", path_params={"id": dep.id},
                       json={"min_runs": 3, "max_runs": 3}).raise_for_status()
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled"]))),
        )
    times = sorted(r.expected_start_time for r in runs if r.auto_scheduled)[:3]
    assert times == [d.astimezone(dt.timezone.utc) for d in expected]


def test_sensor_polls_every_five_minutes(deployed):
    (schedule,) = _deployment(deployed, "hubflow-watch/sensor").schedules
    assert schedule.schedule.interval == dt.timedelta(minutes=5) and schedule.active


def _automation_for(deployment_id, expect: str | None = None):
    """The deployment's one automation (with `expect`: the one expecting that event; retrain has two)."""
    with _client() as client:
        found = [a for a in client.read_automations()
                 if any(str(getattr(x, "deployment_id", "")) == deployment_id for x in a.actions)
                 and (expect is None or expect in a.trigger.expect)]
    assert len(found) == 1, found
    return found[0]


def _runs_of(deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client() as client:
        return [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
            any_=[uuid.UUID(deployment_id)]))) if not r.auto_scheduled]


def test_dataset_update_event_starts_a_retrain_at_the_new_sha(deployed):
    from prefect.events import emit_event

    dep_id = deployed["hubflow-pipeline/retrain"]
    automation = _automation_for(dep_id, "hub.dataset.updated")
    assert automation.trigger.match.model_dump() == {"prefect.resource.id": "hub.dataset.hubflow/support-tickets"}
    assert automation.trigger.expect == {"hub.dataset.updated"}
    before = {r.id for r in _runs_of(dep_id)}
    sha = uuid.uuid4().hex + "abcdefgh"
    emit_event(event="hub.dataset.updated",
               resource={"prefect.resource.id": "hub.dataset.hubflow/other-dataset"}, payload={"revision": "nope"})
    emit_event(event="hub.dataset.updated", resource={"prefect.resource.id": "hub.dataset.hubflow/support-tickets",
                                                      "prefect.resource.name": "hubflow/support-tickets"},
               payload={"repo": "hubflow/support-tickets", "repo_type": "dataset", "revision": sha})
    new = _wait_for(lambda: [r for r in _runs_of(dep_id) if r.id not in before], 30, "the triggered retrain run")
    time.sleep(1.0)  # the other dataset's event, had it matched, would have landed by now too
    new = [r for r in _runs_of(dep_id) if r.id not in before]
    assert len(new) == 1
    config = new[0].parameters["config"]
    assert config["data"]["revision"] == sha
    assert config["data"]["source"] == "hubflow/support-tickets" and config["artifact_store"] == STORE
    assert config["publish"]["enabled"] is False  # the chained publish deployment publishes


def test_a_new_corpus_revision_re_embeds_it_at_that_sha(deployed):
    """The embedding corpus's deployment: a hub.dataset.updated event for the corpus starts one batch run over the
    new revision; another dataset's event starts none."""
    from prefect.events import emit_event

    dep_id = deployed["hubflow-batch-inference/re-embed"]
    automation = _automation_for(dep_id)
    assert automation.trigger.match.model_dump() == {"prefect.resource.id": "hub.dataset.hubflow/support-corpus"}
    before = {r.id for r in _runs_of(dep_id)}
    sha = uuid.uuid4().hex + "01234567"
    emit_event(event="hub.dataset.updated", resource={"prefect.resource.id": "hub.dataset.hubflow/support-tickets"},
               payload={"revision": "nope"})
    emit_event(event="hub.dataset.updated", resource={"prefect.resource.id": "hub.dataset.hubflow/support-corpus"},
               payload={"repo": "hubflow/support-corpus", "repo_type": "dataset", "revision": sha})
    _wait_for(lambda: [r for r in _runs_of(dep_id) if r.id not in before], 30, "the triggered re-embed run")
    time.sleep(1.0)
    (run,) = [r for r in _runs_of(dep_id) if r.id not in before]
    data = run.parameters["data"]
    assert (data["source"], data["revision"], data["test_split"]) == ("hubflow/support-corpus", sha, "corpus")
    assert run.parameters["model_repo_id"] == "demo/minilm-support-search"


def test_a_completed_retrain_chains_into_publish_and_a_failed_one_does_not(deployed):
    from prefect.states import Completed, Failed

    retrain_id, publish_id = deployed["hubflow-pipeline/retrain"], deployed["hubflow-publish/on-train-complete"]
    automation = _automation_for(publish_id)
    assert automation.trigger.expect == {"prefect.flow-run.Completed"}
    related = [r.model_dump() for r in automation.trigger.match_related]
    assert {"prefect.resource.role": "flow", "prefect.resource.name": "hubflow-pipeline"} in related
    assert {"prefect.resource.role": "deployment", "prefect.resource.name": "retrain"} in related
    before = {r.id for r in _runs_of(publish_id)}
    with _client() as client:
        failed = client.create_flow_run_from_deployment(uuid.UUID(retrain_id))
        client.set_flow_run_state(failed.id, Failed(), force=True)
        done = client.create_flow_run_from_deployment(uuid.UUID(retrain_id))
        client.set_flow_run_state(done.id, Completed(), force=True)
    new = _wait_for(lambda: [r for r in _runs_of(publish_id) if r.id not in before], 30, "the publish run")
    time.sleep(1.0)
    new = [r for r in _runs_of(publish_id) if r.id not in before]
    assert len(new) == 1
    assert new[0].parameters["summary_uri"] == f"{STORE}/runs/{done.id}/summary.json"
    publish = new[0].parameters["publish"]
    assert publish == _deployment(deployed, "hubflow-pipeline/pipeline").parameters["config"]["publish"]


# ---- batch inference ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_repos(localhub, tmp_path_factory):
    """A tiny BERT classifier and an unlabeled dataset (a text column only, one `test` split) on localhub."""
    import pyarrow as pa
    from huggingface_hub import HfApi

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    model_repo, data_repo = f"alice/tiny-clf-{tag}", f"alice/unlabeled-{tag}"
    model_dir = tmp_path_factory.mktemp("tiny-clf")  # make_tiny_bert writes the model into it
    model_sha = push_tiny_bert(api, model_repo, model_dir, num_labels=3)
    texts = [t for t, _ in synthetic_rows(90, seed=7)]
    tables = {"test": pa.table({"text": texts})}
    data_sha = push_parquet_dataset(api, data_repo, tmp_path_factory.mktemp("unlabeled"), tables)
    return {"model": model_repo, "model_sha": model_sha, "model_dir": model_dir, "data": data_repo,
            "data_sha": data_sha, "texts": texts}


def test_batch_inference_keeps_every_row_and_reruns_from_the_store(batch_repos, localhub, tmp_path, monkeypatch):
    from hubflow.config import DataConfig, InferenceConfig
    from hubflow.flows.batch import batch_inference
    from hubflow.stages.facts import weights_fingerprint
    from hubflow.stages.predict import read_predictions

    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    args = dict(model_repo_id=batch_repos["model"], data=DataConfig(source=batch_repos["data"], test_split="test"),
                inference=InferenceConfig(batch_size=16, shard_size=40), artifact_store=str(tmp_path))
    result = batch_inference(**args)
    assert (result.model.sha, result.dataset.sha) == (batch_repos["model_sha"], batch_repos["data_sha"])
    table = read_predictions(result.predictions)
    assert table.num_rows == result.predictions.rows == len(batch_repos["texts"]) == 90
    assert table.column("row_id").to_pylist() == list(range(90))
    assert table.column("text").to_pylist() == batch_repos["texts"]
    assert "label" not in table.column_names  # unlabeled input: predictions only
    assert set(table.column("pred_label").to_pylist()) <= {"LABEL_0", "LABEL_1", "LABEL_2"}
    # The model went into the store under its sha, byte for byte, so a gpu worker elsewhere could load it.
    assert result.model_uri.startswith(str(tmp_path)) and batch_repos["model_sha"] in result.model_uri
    assert weights_fingerprint(result.model_uri) == weights_fingerprint(batch_repos["model_dir"])

    again = batch_inference(**args, return_state=True)
    assert again.result().predictions == result.predictions
    assert _task_states(again.state_details.flow_run_id)["predict"] == "Cached"


def test_batch_inference_reads_a_folder_of_files_and_ignores_labels(batch_repos, localhub, tmp_path, monkeypatch):
    import json

    from hubflow.config import DataConfig
    from hubflow.flows.batch import batch_inference
    from hubflow.stages.predict import read_predictions

    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    rows = synthetic_rows(25, seed=3)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "today.jsonl").write_text("".join(json.dumps({"body": t, "label": y}) + "\n" for t, y in rows))
    data = DataConfig(source=str(tmp_path / "in"), test_split="today", text_column="body", max_test_samples=20)
    result = batch_inference(batch_repos["model"], data, artifact_store=str(tmp_path / "store"))
    table = read_predictions(result.predictions)
    assert result.dataset is None and result.split == "today"
    assert table.column("text").to_pylist() == [t for t, _ in rows[:20]]
    assert "label" not in table.column_names


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}  # "predict-3f1" -> "predict"


def test_batch_inference_refuses_a_relative_store_in_pools_mode():
    from hubflow.config import DataConfig, ExecutionConfig
    from hubflow.flows.batch import batch_inference

    # Relative: a different folder in each worker's directory (an absolute path is a store every worker may see).
    with pytest.raises(ValueError, match="shared artifact_store"):
        batch_inference("alice/m", DataConfig(source="alice/d"), artifact_store="./.hubflow/store",
                        execution=ExecutionConfig(mode="pools"))


def test_deploying_without_the_shared_store_creates_nothing(cli_env, tmp_path):
    """HUBFLOW_STORE unset: the deploy stops at its first build step, naming the variable; no deployment exists."""
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        d["name"] = f"{d['name']}-nostore"
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {k: v for k, v in cli_env.items() if k != "HUBFLOW_STORE"}
    deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(prefect_file),
                             "--all"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert deploy.returncode != 0
    assert "HUBFLOW_STORE must be the shared artifact store" in deploy.stdout + deploy.stderr
    with _client() as client:
        names = [d.name for d in client.read_deployments()]
    assert not [n for n in names if n.endswith("-nostore")], names


def _deploy_the_pipeline_alone(cli_env, tmp_path, store: str, name: str) -> subprocess.CompletedProcess:
    """`prefect deploy` of the pipeline deployment (renamed `name`) with HUBFLOW_STORE=`store`."""
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    spec["deployments"] = [{**d, "name": name} for d in spec["deployments"] if d["name"] == "pipeline"]
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**cli_env, "HUBFLOW_STORE": store}
    up = subprocess.run([str(BIN / "hubflow"), "pools", "up"], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    return subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--all"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_deploying_with_an_absolute_store_path_works_and_says_every_worker_must_see_it(cli_env, tmp_path):
    """One host, or a mount every worker shares: the pipeline is deployed in pools mode with that store."""
    from hubflow.config import ExecutionMode, PipelineConfig

    store = str(tmp_path / "shared" / "store")
    deploy = _deploy_the_pipeline_alone(cli_env, tmp_path, store, "pipeline-local-store")
    assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-4000:]
    said = [line for line in (deploy.stdout + deploy.stderr).splitlines() if "every worker" in line]
    assert said and f"HUBFLOW_STORE={store} is a local path; every worker of the cpu and gpu pools must see " \
        "that path" in said[0], said
    with _client() as client:
        deployment = client.read_deployment_by_name("hubflow-pipeline/pipeline-local-store")
    config = PipelineConfig.model_validate(deployment.parameters["config"])  # what each of its runs validates
    assert config.artifact_store == store and config.execution.mode is ExecutionMode.pools


def test_deploying_with_a_relative_store_path_creates_nothing(cli_env, tmp_path):
    """A relative path would be a different folder in each worker's directory: refused as an unset one is."""
    from prefect.exceptions import ObjectNotFound

    deploy = _deploy_the_pipeline_alone(cli_env, tmp_path, "./store", "pipeline-relative-store")
    assert deploy.returncode != 0
    assert "HUBFLOW_STORE must be the shared artifact store" in deploy.stdout + deploy.stderr
    assert "it is ./store" in deploy.stdout + deploy.stderr
    with _client() as client, pytest.raises(ObjectNotFound):
        client.read_deployment_by_name("hubflow-pipeline/pipeline-relative-store")
