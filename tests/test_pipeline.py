"""The pipeline end to end on localhub (real HF clients over HTTP) and Prefect's test API, with a tiny BERT.

Covers: pinned shas recorded, rows out = rows in, the checkpoint reloads and reproduces the stored predictions, a
rerun skips every stage, changing one inference setting reruns inference only, and every preflight check fails
before training with a message naming the culprit.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.tiny import make_tiny_bert, push_demo_dataset, push_parquet_dataset, push_tiny_bert

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def hub_repos(localhub, tmp_path_factory):
    """alice/tiny-bert (a config-built BERT) and alice/tickets (the demo dataset layout) on localhub."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    model_repo, data_repo = f"alice/tiny-bert-{tag}", f"alice/tickets-{tag}"
    model_sha = push_tiny_bert(api, model_repo, tmp_path_factory.mktemp("tiny-bert"), num_labels=4)
    data_sha = push_demo_dataset(api, data_repo, tmp_path_factory.mktemp("tickets"))
    return {"model": model_repo, "model_sha": model_sha, "data": data_repo, "data_sha": data_sha, "api": api}


@pytest.fixture()
def alice_env(localhub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))


def tiny_config(hub_repos, store, **changes):
    from hubflow.config import PipelineConfig

    raw = {
        "model": {"repo_id": hub_repos["model"]},
        "data": {"source": hub_repos["data"], "max_train_samples": 240, "max_eval_samples": 40, "max_test_samples": 90},
        "preprocess": {"max_length": 32},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "checkpoint_every_steps": 5},
        "inference": {"batch_size": 16, "shard_size": 40},
        "artifact_store": str(store),
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return PipelineConfig.model_validate(raw)


def task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}  # "train-3f1" -> "train"


@pytest.fixture(scope="module")
def first_run(prefect_api, hub_repos, localhub, tmp_path_factory):
    import os

    from hubflow.flows.pipeline import pipeline

    store = tmp_path_factory.mktemp("store")
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        state = pipeline(tiny_config(hub_repos, store), return_state=True)
    finally:
        os.environ.pop("HF_TOKEN", None)
    return store, state


def test_pipeline_pins_shas_and_keeps_every_row(first_run, hub_repos):
    import pyarrow.parquet as pq

    from hubflow.stages.predict import read_predictions

    _, state = first_run
    result = state.result()
    assert result.base_model.sha == hub_repos["model_sha"]
    assert result.dataset.sha == hub_repos["data_sha"]
    assert result.raw.source_sha == hub_repos["data_sha"]
    assert result.checkpoint.base_model.sha == hub_repos["model_sha"]
    test_rows = pq.read_table(f"{result.raw.uri}/test.parquet").num_rows
    table = read_predictions(result.predictions)
    assert table.num_rows == result.predictions.rows == test_rows == 90
    assert table.column("row_id").to_pylist() == list(range(90))
    texts_in = pq.read_table(f"{result.raw.uri}/test.parquet").column("text").to_pylist()
    assert table.column("text").to_pylist() == texts_in
    assert 0.0 <= result.evaluation.metrics["accuracy"] <= 1.0


def test_checkpoint_reloads_and_reproduces_predictions(first_run):
    from transformers import AutoModelForSequenceClassification

    from hubflow.kinds.text_classification.model import predict_texts
    from hubflow.stages.predict import read_predictions

    _, state = first_run
    result = state.result()
    folder = result.checkpoint.uri
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == result.checkpoint.facts.label_names
    stored = read_predictions(result.predictions).slice(0, 12).to_pylist()
    again = predict_texts(folder, [row["text"] for row in stored])
    assert [p["label"] for p in again] == [row["pred_label"] for row in stored]


def test_rerun_skips_every_stage(first_run, hub_repos, alice_env):
    from hubflow.flows.pipeline import pipeline

    store, first = first_run
    state = pipeline(tiny_config(hub_repos, store), return_state=True)
    states = task_states(state.state_details.flow_run_id)
    for stage in ("pull-dataset", "preprocess", "train", "predict", "evaluate"):
        assert states[stage] == "Cached", states
    assert state.result().checkpoint == first.result().checkpoint


def test_changing_an_inference_setting_reruns_only_inference(first_run, hub_repos, alice_env):
    from hubflow.flows.pipeline import pipeline

    store, first = first_run
    state = pipeline(tiny_config(hub_repos, store, inference__shard_size=25), return_state=True)
    states = task_states(state.state_details.flow_run_id)
    assert {s: states[s] for s in ("pull-dataset", "preprocess", "train")} == dict.fromkeys(
        ("pull-dataset", "preprocess", "train"), "Cached"
    )
    assert states["predict"] == "Completed" and states["evaluate"] == "Completed"
    # Same model, same rows: another sharding must not change a single prediction.
    from hubflow.stages.predict import read_predictions

    before = read_predictions(first.result().predictions).column("pred").to_pylist()
    assert read_predictions(state.result().predictions).column("pred").to_pylist() == before
    assert state.result().predictions.shards == 4 != first.result().predictions.shards


def test_changing_only_the_batch_size_reuses_every_prediction(first_run, hub_repos, alice_env):
    """Batch size and token budget change padding, not a classifier's predictions: nothing is recomputed."""
    from hubflow.flows.pipeline import pipeline

    store, first = first_run
    state = pipeline(tiny_config(hub_repos, store, inference__batch_size=7, inference__max_tokens_per_batch=512),
                     return_state=True)
    states = task_states(state.state_details.flow_run_id)
    assert states["predict"] == "Cached" and states["evaluate"] == "Cached", states
    assert state.result().predictions == first.result().predictions


def test_store_gc_frees_what_no_kept_run_needs_and_a_kept_run_still_hits(first_run, hub_repos, alice_env):
    """After the runs above (the first, its rerun, another sharding, another batch size), keep the newest run only:
    the other sharding's predict/evaluate folders go, the shared stages stay; the kept config reruns from cache,
    the removed one recomputes (its cache record went with its folder)."""
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import get_current_settings

    from hubflow.doors import store as door
    from hubflow.flows.pipeline import pipeline

    store, first = first_run
    hubflow = str(Path(sys.executable).with_name("hubflow"))
    # The CLI runs as an operator would, with the same Prefect result storage as the runs (the harness's).
    env = {**os.environ, "PREFECT_LOCAL_STORAGE_PATH": str(get_current_settings().results.local_storage_path)}
    before = {stage: set(door.ls(f"{store}/{stage}")) for stage in ("pull-dataset", "preprocess", "train", "predict")}
    dry = subprocess.run([hubflow, "store", "gc", "--store", str(store), "--keep-last", "1", "--grace-minutes", "0",
                          "--dry-run"], capture_output=True, text=True, check=True, env=env).stdout
    assert "would remove 2 stage folders" in dry and "predict/" in dry and "evaluate/" in dry, dry
    assert {s: set(door.ls(f"{store}/{s}")) for s in before} == before  # a dry run removes nothing
    out = subprocess.run([hubflow, "store", "gc", "--store", str(store), "--keep-last", "1", "--grace-minutes", "0"],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert "removed 2 stage folders" in out, out
    assert len(door.ls(f"{store}/predict")) == len(before["predict"]) - 1
    assert {s: set(door.ls(f"{store}/{s}")) for s in ("pull-dataset", "preprocess", "train")} == {
        s: before[s] for s in ("pull-dataset", "preprocess", "train")}

    # The cache records went with their folders, the kept ones stayed.
    records = {p.name for p in Path(env["PREFECT_LOCAL_STORAGE_PATH"]).expanduser().iterdir()}
    removed = before["predict"] - set(door.ls(f"{store}/predict"))
    assert {f"predict-{k}" for k in removed}.isdisjoint(records)
    assert {f"predict-{k}" for k in door.ls(f"{store}/predict")} <= records

    kept = pipeline(tiny_config(hub_repos, store), return_state=True)
    assert {task_states(kept.state_details.flow_run_id)[s] for s in ("train", "predict", "evaluate")} == {"Cached"}
    # A new process (as a user's next `hubflow run`), the removed run's config: inference is computed again.
    import yaml

    recipe = Path(store).parent / "gone.yaml"
    recipe.write_text(yaml.safe_dump(tiny_config(hub_repos, store, inference__shard_size=25).model_dump(mode="json")))
    api = {"PREFECT_API_URL": str(get_current_settings().api.url), "HF_TOKEN": os.environ["HF_TOKEN"]}
    run = subprocess.run([hubflow, "run", str(recipe)], capture_output=True, text=True, env={**env, **api},
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = next(line.split()[-1] for line in run.stdout.splitlines() if line.startswith("summary:"))
    states = task_states(Path(summary).parent.name)
    assert states["predict"] == "Completed" and states["train"] == "Cached", states


# ---- preflight: bad input fails before training, naming the culprit -------------------------------------------


def _fails_before_training(config, match):
    from hubflow.doors import store
    from hubflow.flows.pipeline import pipeline

    with pytest.raises(Exception, match=match):
        pipeline(config)
    assert not store.exists(store.join(config.artifact_store, "train"))


def test_unknown_model_repo(hub_repos, tmp_path, alice_env):
    _fails_before_training(tiny_config(hub_repos, tmp_path, model__repo_id="alice/no-such-model"),
                           r"model\.repo_id='alice/no-such-model'")


def test_unknown_revision(hub_repos, tmp_path, alice_env):
    _fails_before_training(tiny_config(hub_repos, tmp_path, data__revision="v9"), r"data\.revision='v9'")


def test_missing_column(hub_repos, tmp_path, alice_env):
    _fails_before_training(tiny_config(hub_repos, tmp_path, data__text_column="body"), r"'body'")


def _dataset_repo(hub_repos, tmp_path, rows: dict[str, list[tuple[str, str]]]) -> str:
    import pyarrow as pa

    schema = pa.schema([("text", pa.string()), ("label", pa.string())])
    tables = {split: pa.table({"text": [t for t, _ in items], "label": [lab for _, lab in items]}, schema=schema)
              for split, items in rows.items()}
    repo = f"alice/bad-{uuid.uuid4().hex[:6]}"
    push_parquet_dataset(hub_repos["api"], repo, tmp_path / "ds", tables)
    return repo


def test_empty_split(hub_repos, tmp_path, alice_env):
    good = ([(f"my invoice {i} is wrong", "billing") for i in range(10)]
            + [(f"parcel {i} lost", "shipping") for i in range(10)])
    repo = _dataset_repo(hub_repos, tmp_path, {"train": good, "validation": good, "test": []})
    config = tiny_config(hub_repos, tmp_path / "store", data__source=repo, data__max_test_samples=None)
    _fails_before_training(config, r"test.*empty|empty.*test")


def test_single_class_labels(hub_repos, tmp_path, alice_env):
    same = [(f"my invoice {i} is wrong", "billing") for i in range(20)]
    repo = _dataset_repo(hub_repos, tmp_path, {"train": same, "validation": same, "test": same})
    _fails_before_training(tiny_config(hub_repos, tmp_path / "store", data__source=repo),
                           r"single-class|one class|label")


def test_pickle_only_weights_are_refused(hub_repos, tmp_path, alice_env):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = make_tiny_bert(tmp_path / "pickled", num_labels=2)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    repo = f"alice/pickled-{uuid.uuid4().hex[:6]}"
    hub_repos["api"].create_repo(repo)
    hub_repos["api"].upload_folder(folder_path=str(folder), repo_id=repo)
    shutil.rmtree(folder)
    _fails_before_training(tiny_config(hub_repos, tmp_path / "store", model__repo_id=repo), r"no safetensors weights")


def test_invalid_recipe_values_name_the_field(tmp_path):
    from pydantic import ValidationError

    from hubflow.config import load_recipe

    with pytest.raises(ValidationError, match=r"train\.learning_rate"):
        load_recipe("deployments/configs/demo.yaml", ["train.learning_rate=-1"])
    with pytest.raises(ValidationError, match=r"train\.epoch"):
        load_recipe("deployments/configs/demo.yaml", ["train.epoch=3"])  # misspelt key
    with pytest.raises(ValidationError, match=r"model\.repo_id"):
        load_recipe("deployments/configs/demo.yaml", ["model.repo_id=a/b/c"])


@pytest.mark.parametrize("recipe",
                         sorted(str(p) for p in __import__("pathlib").Path("deployments/configs").glob("*.yaml")))
def test_shipped_recipes_validate(recipe):
    from hubflow.config import load_recipe

    config = load_recipe(recipe)
    assert config.model.repo_id and config.data.source


def test_a_read_only_token_fails_the_release_preflight_before_training(hub_repos, localhub, tmp_path, monkeypatch):
    """publish.enabled with a token that cannot write: the run stops seconds after start, nothing trained, nothing
    published (no repo created)."""
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", localhub.token("reader"))
    target = f"reader/never-{uuid.uuid4().hex[:6]}"
    config = tiny_config(hub_repos, tmp_path / "store", publish__enabled=True, publish__repo_id=target)
    _fails_before_training(config, r"publish\.repo_id='reader/never-.*': the token is read-only")
    assert not HfApi(endpoint=localhub.url, token=localhub.token("alice")).repo_exists(target)
    assert not (tmp_path / "store" / "pull-dataset").exists()  # it stopped before pulling the data
