"""The pipeline end to end through publishing and the Space, on localhub (which runs Spaces) and Prefect's test API.

Three real runs of `flows.pipeline.pipeline` with publish, gate and Space on: a mediocre champion is published and
served; a better challenger is published and the Space moves to it; a worse one is not published and the Space stays.
"""

from __future__ import annotations

import os
import uuid

import pytest

pytestmark = pytest.mark.usefixtures("prefect_api")
TAG = f"rel-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def inputs(localhub, tmp_path_factory):
    """A config-built tiny BERT and a learnable keyword dataset (tests/tiny.py) as Hub repos."""
    from huggingface_hub import HfApi

    from tests.tiny import push_keyword_dataset, push_tiny_bert

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    model_repo, data_repo = f"alice/{TAG}-base", f"alice/{TAG}-data"
    model_sha = push_tiny_bert(api, model_repo, tmp_path_factory.mktemp("bert"))
    sizes = {"train": 240, "validation": 45, "test": 60}
    data_sha = push_keyword_dataset(api, data_repo, tmp_path_factory.mktemp("data"), sizes)
    return {"api": api, "model": model_repo, "model_sha": model_sha, "data": data_repo, "data_sha": data_sha,
            "target": f"alice/{TAG}-model", "space": f"alice/{TAG}-space"}


def release(inputs, store, **train):
    from hubflow.config import PipelineConfig
    from hubflow.flows.pipeline import pipeline

    config = PipelineConfig.model_validate({
        "model": {"repo_id": inputs["model"]},
        "data": {"source": inputs["data"]},
        "preprocess": {"max_length": 32},
        "train": {"epochs": 4, "batch_size": 16, "learning_rate": 5e-3, "warmup_ratio": 0.1, "seed": 0, **train},
        "inference": {"batch_size": 32, "shard_size": 25},
        "publish": {"enabled": True, "repo_id": inputs["target"], "gate": {"mode": "champion"}},
        "space": {"enabled": True, "space_id": inputs["space"], "timeout_seconds": 240},
        "artifact_store": str(store),
    })
    return pipeline(config, return_state=True)


@pytest.fixture(scope="module")
def runs(inputs, localhub, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        champion = release(inputs, store, max_steps=3, learning_rate=1e-3)
        better = release(inputs, store)
        worse = release(inputs, store, max_steps=1, learning_rate=1e-6)
        again = release(inputs, store)  # the better run again: every stage cached, nothing new published
    finally:
        os.environ.pop("HF_TOKEN", None)
    runs = {name: state.result() for name, state in
            {"champion": champion, "better": better, "worse": worse, "again": again}.items()}
    runs["states"] = {"champion": champion, "better": better, "worse": worse, "again": again}
    f1 = {k: runs[k].evaluation.metrics["macro_f1"] for k in ("champion", "better", "worse")}
    assert f1["better"] > f1["champion"] > f1["worse"], f1  # else the gate has nothing to decide
    return runs


def test_the_better_challenger_is_published_with_its_lineage(runs, inputs, localhub):
    from huggingface_hub import ModelCard

    better = runs["better"]
    assert better.published.decision.promoted and better.published.model.created
    card = ModelCard.load(inputs["target"], token=localhub.token("alice"))
    text = str(card)
    assert inputs["model_sha"] in text and inputs["data_sha"] in text
    results = card.data.eval_results
    scores = {r.metric_type: r.metric_value for r in results}
    assert scores["accuracy"] == pytest.approx(better.evaluation.metrics["accuracy"])
    assert inputs["api"].model_info(inputs["target"]).sha == better.published.model.sha


def test_the_published_model_reproduces_the_batch_predictions(runs, inputs, localhub):
    from huggingface_hub import snapshot_download

    from hubflow.kinds.text_classification.model import predict_texts
    from hubflow.stages.predict import read_predictions

    better = runs["better"]
    folder = snapshot_download(inputs["target"], revision=better.published.model.tag, token=localhub.token("alice"))
    rows = read_predictions(better.predictions).to_pylist()
    again = predict_texts(folder, [r["text"] for r in rows], max_length=32)
    assert [p["label"] for p in again] == [r["pred_label"] for r in rows]


def test_the_predictions_load_as_a_dataset(runs, localhub, datasets_lib):
    better = runs["better"]
    repo = better.published.predictions
    ds = datasets_lib.load_dataset(repo.repo_id, revision=repo.sha, split="test", token=localhub.token("alice"))
    assert ds.num_rows == better.predictions.rows == 60


def test_the_space_serves_the_better_model_and_answers_like_batch_inference(runs, inputs, localhub):
    from gradio_client import Client

    better = runs["better"]
    space = better.space
    assert space.stage == "RUNNING" and space.model.sha == better.published.model.sha
    runtime = inputs["api"].get_space_runtime(inputs["space"])
    assert runtime.stage == "RUNNING"
    variables = inputs["api"].get_space_variables(inputs["space"])
    assert variables["MODEL_REVISION"].value == better.published.model.sha  # the Space moved to the challenger
    from hubflow.stages.predict import read_predictions

    row = read_predictions(better.predictions).to_pylist()[0]
    host = inputs["api"].space_info(inputs["space"]).host  # where it runs now (a later deploy may have restarted it)
    answer = Client(host, verbose=False).predict(row["text"], api_name="/predict")
    assert answer["label"] == row["pred_label"]


def test_the_space_is_pinned_to_the_versions_that_made_the_predictions(runs, inputs):
    """requirements.txt and sdk_version come from the predictions' manifest, written by the run that made them."""
    import yaml

    from hubflow.stages.predict import read_manifest

    better = runs["better"]
    recorded = read_manifest(better.predictions)["software"]
    assert {"torch", "transformers", "gradio"} <= set(recorded)
    sha = better.space.sha
    api = inputs["api"]
    read = lambda path: open(api.hf_hub_download(inputs["space"], path, repo_type="space", revision=sha)).read()  # noqa: E731
    pins = dict(line.split("==") for line in read("requirements.txt").splitlines() if "==" in line)
    assert pins == {"transformers": recorded["transformers"], "torch": recorded["torch"]}
    assert yaml.safe_load(read("README.md").split("---")[1])["sdk_version"] == recorded["gradio"]


def test_a_worse_challenger_is_not_published_and_the_space_stays(runs, inputs):
    worse = runs["worse"]
    assert not worse.published.decision.promoted and worse.published.model is None and worse.space is None
    assert inputs["api"].model_info(inputs["target"]).sha == runs["better"].published.model.sha
    variables = inputs["api"].get_space_variables(inputs["space"])
    assert variables["MODEL_REVISION"].value == runs["better"].published.model.sha


def test_publishing_the_same_model_again_makes_no_commit(runs, inputs):
    again = runs["again"]
    assert again.published.model.sha == runs["better"].published.model.sha
    assert not again.published.model.created and not again.published.predictions.created


def test_the_token_is_nowhere(runs, inputs, localhub, tmp_path):
    """Not in any file of the model, predictions or Space repo, nor in the hub's log, nor in any run log/artifact."""
    from huggingface_hub import snapshot_download
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    token = localhub.token("alice")
    better = runs["better"]
    for repo_id, repo_type in ((inputs["target"], "model"), (better.published.predictions.repo_id, "dataset"),
                               (inputs["space"], "space")):
        folder = snapshot_download(repo_id, repo_type=repo_type, token=token, local_dir=tmp_path / repo_type)
        for path in (p for p in tmp_path.joinpath(repo_type).rglob("*") if p.is_file()):
            assert token.encode() not in path.read_bytes(), f"token in {repo_type} file {path}"
        assert folder
    assert token not in localhub.log_file.read_text(errors="replace")
    ids = [s.state_details.flow_run_id for s in runs["states"].values()]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
    assert logs and artifacts
    assert not [line.message for line in logs if token in line.message]
    assert not [a.key for a in artifacts if token in str(a.data)]
