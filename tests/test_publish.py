"""Publishing on localhub (real HF clients over HTTP) and Prefect's test API, from real tiny pipeline runs.

Covers: the model repo is private by default and its card parses back with the lineage and the metrics; the model
reloads at its tag and reproduces the stored predictions; publishing the same content again makes no commit; a publish
cut at the commit leaves the previous commit at head; the predictions load as a dataset, rows in order; the gate
(threshold, worse and better challengers scored against the published champion on the same test set); and the token
appears in no published file, no Prefect artifact or log, and not in the hub's log.
"""

from __future__ import annotations

import os
import uuid

import pytest

pytestmark = pytest.mark.usefixtures("prefect_api")
TAG = f"pub-{uuid.uuid4().hex[:6]}"  # every repo this module creates carries it, so the leak scan can find them all


def repo(kind: str) -> str:
    return f"alice/{TAG}-{kind}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def hub_inputs(localhub, tmp_path_factory):
    """A config-built tiny BERT and a learnable keyword dataset (tests/tiny.py), as Hub repos on localhub."""
    from huggingface_hub import HfApi

    from tests.tiny import push_keyword_dataset, push_tiny_bert

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    model_repo, data_repo = repo("base"), repo("data")
    model_sha = push_tiny_bert(api, model_repo, tmp_path_factory.mktemp("bert"))
    sizes = {"train": 240, "validation": 45, "test": 60}
    data_sha = push_keyword_dataset(api, data_repo, tmp_path_factory.mktemp("data"), sizes)
    return {"model": model_repo, "model_sha": model_sha, "data": data_repo, "data_sha": data_sha}


def run_config(hub_inputs, store, **train):
    from hubflow.config import PipelineConfig

    return PipelineConfig.model_validate({
        "model": {"repo_id": hub_inputs["model"]},
        "data": {"source": hub_inputs["data"]},
        "preprocess": {"max_length": 32},
        "train": {"epochs": 4, "batch_size": 16, "learning_rate": 5e-3, "warmup_ratio": 0.1, "seed": 0, **train},
        "inference": {"batch_size": 32, "shard_size": 25},
        "artifact_store": str(store),
    })


@pytest.fixture(scope="module")
def runs(prefect_api, hub_inputs, localhub, tmp_path_factory):
    """Two real pipeline runs sharing a store: `good` (trained) and `weak` (one step at a tiny learning rate)."""
    from hubflow.flows.pipeline import pipeline

    store = tmp_path_factory.mktemp("store")
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        good = pipeline(run_config(hub_inputs, store))
        weak = pipeline(run_config(hub_inputs, store, max_steps=1, learning_rate=1e-6))
    finally:
        os.environ.pop("HF_TOKEN", None)
    # The gate tests need a clear gap; a tiny model that fails to learn would make them meaningless.
    assert good.evaluation.metrics["macro_f1"] > weak.evaluation.metrics["macro_f1"] + 0.2, (good, weak)
    return {"good": good, "weak": weak}


def publish(result, localhub, **cfg):
    """Run the publish flow as alice; returns (PublishOutcome, flow run id)."""
    from hubflow.config import PublishConfig
    from hubflow.flows.publish import publish_run

    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        state = publish_run(result.summary_uri, PublishConfig.model_validate(cfg), return_state=True)
    finally:
        os.environ.pop("HF_TOKEN", None)
    return state.result(), state.state_details.flow_run_id


@pytest.fixture(scope="module")
def published(runs, localhub):
    """The good run published with the defaults (private, gate off) to a fresh repo."""
    model_repo = repo("model")
    outcome, run_id = publish(runs["good"], localhub, repo_id=model_repo)
    return {"outcome": outcome, "run_id": run_id, "repo": model_repo}


@pytest.fixture()
def alice_env(localhub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))


def artifacts_of(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        of_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        found = client.read_artifacts(artifact_filter=of_run)
    return {a.key: str(a.data) for a in found if a.key}


def head_sha(hf_api, repo_id, repo_type="model") -> str:
    return hf_api.repo_info(repo_id, repo_type=repo_type).sha


# ---- the model --------------------------------------------------------------------------------------------------
def test_model_repo_is_private_with_a_card_that_parses_back(published, runs, localhub, hf_api, hub_inputs):
    from huggingface_hub import HfApi, ModelCard
    from huggingface_hub.errors import RepositoryNotFoundError

    good, outcome = runs["good"], published["outcome"]
    model = outcome.model
    assert outcome.decision.promoted and model.repo_id == published["repo"] and model.created
    assert model.tag == f"run-{good.flow_run_id[:8]}"
    assert head_sha(hf_api, model.repo_id) == model.sha
    assert {t.name: t.target_commit for t in hf_api.list_repo_refs(model.repo_id).tags} == {model.tag: model.sha}
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=localhub.url, token=False).model_info(model.repo_id)

    card = ModelCard.load(model.repo_id, token=localhub.token("alice"))
    data = card.data
    assert data.base_model == hub_inputs["model"] and data.pipeline_tag == "text-classification"
    assert data.library_name == "transformers" and "hubflow" in data.tags
    assert data.datasets == [hub_inputs["data"]]
    lineage = data.to_dict()["hubflow"]
    assert lineage["base_model_sha"] == hub_inputs["model_sha"] and lineage["dataset_sha"] == hub_inputs["data_sha"]
    assert lineage["model_fingerprint"] == good.checkpoint.fingerprint and lineage["flow_run_id"] == good.flow_run_id
    scores = {(r.metric_type, (r.metric_args or {}).get("average")): r.metric_value for r in data.eval_results}
    assert scores == {("accuracy", None): good.evaluation.metrics["accuracy"],
                      ("f1", "macro"): good.evaluation.metrics["macro_f1"]}
    assert {r.dataset_revision for r in data.eval_results} == {hub_inputs["data_sha"]}
    assert f'revision="{model.tag}"' in card.text and good.checkpoint.hardware in card.text

    artifact = artifacts_of(published["run_id"])["published-model"]
    assert model.sha in artifact and model.repo_id in artifact


def test_model_reloads_at_its_tag_and_reproduces_the_predictions(published, runs, localhub):
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForSequenceClassification

    from hubflow.kinds.text_classification.model import predict_texts
    from hubflow.stages.predict import read_predictions

    good, model = runs["good"], published["outcome"].model
    token = localhub.token("alice")
    loaded = AutoModelForSequenceClassification.from_pretrained(model.repo_id, revision=model.tag, token=token)
    assert [loaded.config.id2label[i] for i in range(loaded.config.num_labels)] == good.checkpoint.facts.label_names
    folder = snapshot_download(model.repo_id, revision=model.tag, token=token)
    stored = read_predictions(good.predictions).slice(0, 16).to_pylist()
    again = predict_texts(folder, [r["text"] for r in stored], max_length=good.config.preprocess.max_length)
    assert [p["label"] for p in again] == [r["pred_label"] for r in stored]


def test_publishing_the_same_content_again_makes_no_commit(published, runs, localhub, hf_api):
    from localhub.faults import admin_token, clear_faults, get_faults

    first = published["outcome"]
    commits = len(hf_api.list_repo_commits(first.model.repo_id))
    data_commits = len(hf_api.list_repo_commits(first.predictions.repo_id, repo_type="dataset"))
    admin = admin_token(localhub.data_dir)
    clear_faults(localhub.url, admin=admin)  # resets the hub's per-route-class call counters
    again, run_id = publish(runs["good"], localhub, repo_id=published["repo"])
    seen = get_faults(localhub.url, admin=admin)["seen"]
    assert not seen.get("upload") and not seen.get("commit"), seen  # decided from the head: nothing sent at all
    assert again.model.sha == first.model.sha and not again.model.created
    assert again.predictions.sha == first.predictions.sha and not again.predictions.created
    assert len(hf_api.list_repo_commits(first.model.repo_id)) == commits
    assert len(hf_api.list_repo_commits(first.predictions.repo_id, repo_type="dataset")) == data_commits
    assert "unchanged" in artifacts_of(run_id)["published-model"]


def test_a_publish_cut_at_the_commit_leaves_the_previous_commit(runs, localhub, hf_api, alice_env):
    from huggingface_hub.errors import HfHubHTTPError

    from hubflow.config import PublishConfig
    from hubflow.stages.publish import push_model
    from hubflow.tasks.release import publish_model
    from localhub.faults import admin_token, clear_faults, set_faults

    cfg = PublishConfig(repo_id=repo("cut"))
    before = push_model(runs["weak"], cfg)
    admin = admin_token(localhub.data_dir)
    set_faults(localhub.url, [{"class": "commit", "kind": "500", "next": 1}], admin=admin)
    try:
        with pytest.raises(HfHubHTTPError, match="500"):
            push_model(runs["good"], cfg)
    finally:
        clear_faults(localhub.url, admin=admin)
    assert head_sha(hf_api, cfg.repo_id) == before.sha
    (weights,) = hf_api.get_paths_info(cfg.repo_id, ["model.safetensors"], revision=before.sha)
    assert weights.lfs.sha256 == runs["weak"].checkpoint.fingerprint  # none of the good model's files at head
    assert len(hf_api.list_repo_commits(cfg.repo_id)) == 2  # the repo's initial commit + the weak model

    # The Prefect task retries a 5xx at the Hub edge: the same fault once more, and the publish goes through.
    set_faults(localhub.url, [{"class": "commit", "kind": "500", "next": 1}], admin=admin)
    try:
        after = publish_model(runs["good"], cfg)
    finally:
        clear_faults(localhub.url, admin=admin)
    assert after.created and head_sha(hf_api, cfg.repo_id) == after.sha != before.sha
    (weights,) = hf_api.get_paths_info(cfg.repo_id, ["model.safetensors"], revision=after.sha)
    assert weights.lfs.sha256 == runs["good"].checkpoint.fingerprint


def test_a_release_cut_after_the_model_commit_is_finished_in_the_name_of_the_run_that_made_it(runs, localhub, hf_api,
                                                                                               alice_env):
    """The run `good` commits its model and its release stops there (no predictions). A rerun of the pipeline finds
    every stage cached and the model at head: it publishes the predictions, and the model's card, its tag and the
    rerun's record all name the flow run that made the model commit, not the rerun."""
    from huggingface_hub import ModelCard

    from hubflow.config import PipelineConfig
    from hubflow.flows.pipeline import pipeline
    from hubflow.stages.publish import load_result, push_model

    good = runs["good"]
    model_repo = repo("finished")
    config = PipelineConfig.model_validate({**good.config.model_dump(mode="json"),
                                            "publish": {"enabled": True, "repo_id": model_repo}})
    cut = push_model(good, config.publish)  # what good's publish-model task does; the predictions never follow
    assert not hf_api.repo_exists(f"{model_repo}-predictions", repo_type="dataset")

    rerun = pipeline(config)
    assert rerun.flow_run_id != good.flow_run_id
    model, predictions = rerun.published.model, rerun.published.predictions
    assert model.sha == cut.sha == head_sha(hf_api, model_repo) and not model.created
    assert predictions.created and predictions.sha == head_sha(hf_api, predictions.repo_id, "dataset")

    made_by = f"run-{good.flow_run_id[:8]}"
    card = ModelCard.load(model_repo, token=localhub.token("alice"))
    assert card.data.to_dict()["hubflow"]["flow_run_id"] == good.flow_run_id and good.flow_run_id in card.text
    assert {t.name: t.target_commit for t in hf_api.list_repo_refs(model_repo).tags} == {made_by: cut.sha}
    assert model.tag == made_by and load_result(rerun.summary_uri).published.model.tag == made_by


def test_a_release_target_the_hub_would_refuse_stops_the_run_before_training(hub_inputs, localhub, hf_api,
                                                                             alice_env, tmp_path):
    """publish.repo_id is a valid name, but the predictions repo derived from it (`-predictions` added) is past the
    Hub's 96 characters: the run stops at the release preflight, before the data is pulled, naming the setting."""
    from hubflow.config import PipelineConfig
    from hubflow.flows.pipeline import pipeline

    name = f"{TAG}-" + "m" * (92 - len(TAG) - 1)
    config = PipelineConfig.model_validate({**run_config(hub_inputs, tmp_path / "store").model_dump(mode="json"),
                                            "publish": {"enabled": True, "repo_id": name}})
    refused = rf"publish\.predictions_repo_id='alice/{name}-predictions' is not a Hub repo id"
    with pytest.raises(ValueError, match=refused):
        pipeline(config)
    assert not (tmp_path / "store" / "pull-dataset").exists() and not (tmp_path / "store" / "train").exists()
    assert not hf_api.repo_exists(f"alice/{name}")


# ---- the predictions --------------------------------------------------------------------------------------------
def test_predictions_load_as_a_dataset_in_input_order(published, runs, localhub, datasets_lib, hub_inputs):
    from huggingface_hub import DatasetCard

    from hubflow.stages.predict import read_predictions

    good, outcome = runs["good"], published["outcome"]
    preds = outcome.predictions
    assert preds.repo_id == f"{published['repo']}-predictions" and preds.repo_type == "dataset" and preds.created
    token = localhub.token("alice")
    ds = datasets_lib.load_dataset(preds.repo_id, revision=preds.sha, token=token, split="test")
    stored = read_predictions(good.predictions)
    assert ds.num_rows == good.predictions.rows == stored.num_rows
    assert ds.column_names == ["row_id", "text", "label", "pred", "pred_label", "score"]
    assert ds["row_id"] == list(range(ds.num_rows)) and ds["text"] == stored.column("text").to_pylist()
    assert ds["pred"] == stored.column("pred").to_pylist()
    assert ds.features["pred"].names == good.checkpoint.facts.label_names

    card = DatasetCard.load(preds.repo_id, token=token)
    lineage = card.data.to_dict()["hubflow"]
    assert lineage["model_repo"] == outcome.model.repo_id and lineage["model_sha"] == outcome.model.sha
    assert lineage["source_dataset"] == hub_inputs["data"] and lineage["source_dataset_sha"] == hub_inputs["data_sha"]
    assert outcome.model.sha in card.text and outcome.model.repo_id in card.text


# ---- the gate ---------------------------------------------------------------------------------------------------
def test_gate_threshold_above_the_metric_publishes_nothing(runs, localhub, hf_api):
    model_repo = repo("threshold")
    weak = runs["weak"]
    assert weak.evaluation.metrics["macro_f1"] < 0.99
    outcome, run_id = publish(weak, localhub, repo_id=model_repo, gate={"mode": "threshold", "threshold": 0.99})
    assert not outcome.decision.promoted and outcome.model is None and outcome.predictions is None
    assert "below the threshold" in outcome.decision.reason
    assert not hf_api.repo_exists(model_repo)
    assert not hf_api.repo_exists(f"{model_repo}-predictions", repo_type="dataset")
    assert "not promoted" in artifacts_of(run_id)["promotion-gate"]


def test_gate_compares_challenger_and_champion_on_the_same_test_set(runs, localhub, hf_api):
    good, weak = runs["good"], runs["weak"]
    gate = {"mode": "champion", "metric": "macro_f1"}

    # A worse challenger against the published good model: not promoted, the repo keeps its head.
    strong_repo = repo("champion")
    champion, _ = publish(good, localhub, repo_id=strong_repo)
    outcome, run_id = publish(weak, localhub, repo_id=strong_repo, gate=gate)
    assert not outcome.decision.promoted and outcome.model is None
    assert outcome.decision.champion_sha == champion.model.sha == head_sha(hf_api, strong_repo)
    # The champion was re-scored on the challenger's test rows: the same model, the same rows, the same score.
    assert outcome.decision.champion == pytest.approx(good.evaluation.metrics["macro_f1"], abs=1e-6)
    report = artifacts_of(run_id)["promotion-gate"]
    assert "not promoted" in report and f"{outcome.decision.champion:.4f}" in report

    # A better challenger against the published weak model: promoted and published on top.
    weak_repo = repo("challenged")
    first, _ = publish(weak, localhub, repo_id=weak_repo)
    outcome, _ = publish(good, localhub, repo_id=weak_repo, gate=gate)
    assert outcome.decision.promoted and outcome.decision.champion_sha == first.model.sha
    assert outcome.decision.champion == pytest.approx(weak.evaluation.metrics["macro_f1"], abs=1e-6)
    assert outcome.model.created and head_sha(hf_api, weak_repo) == outcome.model.sha != first.model.sha

    # The champion is this very model: promoted without scoring, and publishing it again is a no-op.
    again, _ = publish(good, localhub, repo_id=weak_repo, gate=gate)
    assert again.decision.promoted and not again.model.created and again.model.sha == outcome.model.sha


# ---- the token --------------------------------------------------------------------------------------------------
def test_the_token_appears_nowhere(published, runs, localhub, hf_api, tmp_path):
    from huggingface_hub import snapshot_download
    from prefect.client.orchestration import get_client

    token = localhub.token("alice")
    repos = [(m.id, "model") for m in hf_api.list_models(author="alice", search=TAG)]
    repos += [(d.id, "dataset") for d in hf_api.list_datasets(author="alice", search=TAG)]
    assert (published["repo"], "model") in repos and (f"{published['repo']}-predictions", "dataset") in repos
    for repo_id, repo_type in repos:
        folder = snapshot_download(repo_id, repo_type=repo_type, token=token, local_dir=tmp_path / repo_id)
        files = folder_files(folder)
        assert files, repo_id
        for file in files:
            assert token.encode() not in file.read_bytes(), file

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
        logs = client.read_logs()
    assert {"published-model", "published-predictions", "promotion-gate"} <= {a.key for a in artifacts}
    for artifact in artifacts:
        assert token not in str(artifact.data) and token not in str(artifact.description), artifact.key
    assert logs and not [log.message for log in logs if token in log.message]
    assert token not in localhub.log_file.read_text()


def folder_files(folder):
    from pathlib import Path

    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and ".cache" not in p.parts)


# ---- reviewed releases ------------------------------------------------------------------------------------------
def test_review_pr_opens_pull_requests_and_commits_nothing_to_main(runs, localhub, hf_api):
    from transformers import AutoModelForSequenceClassification

    good = runs["good"]
    model_repo = repo("reviewed")
    outcome, run_id = publish(good, localhub, repo_id=model_repo, review="pr")
    model, predictions = outcome.model, outcome.predictions
    assert model.pr_num and predictions.pr_num and model.tag is None
    assert [c.title for c in hf_api.list_repo_commits(model_repo)] == ["initial commit"]  # nothing on main
    assert "model.safetensors" not in hf_api.list_repo_files(model_repo)
    assert "model.safetensors" in hf_api.list_repo_files(model_repo, revision=f"refs/pr/{model.pr_num}")
    assert "pull request" in artifacts_of(run_id)["published-model"]

    # A second run of the same release finds its open pull request instead of opening another.
    again, _ = publish(good, localhub, repo_id=model_repo, review="pr")
    assert again.model.pr_num == model.pr_num

    # A person merges it: main now serves the model.
    from huggingface_hub import HfApi

    reviewer = HfApi(endpoint=localhub.url, token=localhub.token("alice"))  # the repo's owner: a writer
    reviewer.merge_pull_request(model_repo, model.pr_num, comment="looks good")
    merged = AutoModelForSequenceClassification.from_pretrained(model_repo, token=localhub.token("alice"))
    assert [merged.config.id2label[i] for i in range(merged.config.num_labels)] == good.checkpoint.facts.label_names


def _paused_publish_run(client, since):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStateName

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["hubflow-publish"])),
                                 flow_run_filter=FlowRunFilter(state=dict(name=FlowRunFilterStateName(any_=["Paused"]))))
    return [r for r in runs if r.start_time and r.start_time >= since]


@pytest.mark.parametrize("approve", [True, False])
def test_review_approval_waits_for_the_form(runs, localhub, hf_api, approve):
    import threading
    import time
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    good = runs["good"]
    model_repo = repo(f"approval-{approve}")
    since = datetime.now(timezone.utc)
    box = {}
    worker = threading.Thread(target=lambda: box.update(
        result=publish_state(good, localhub, repo_id=model_repo, review="approval")))
    worker.start()
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 180
        while not (paused := _paused_publish_run(client, since)):
            assert time.monotonic() < deadline and worker.is_alive(), "the run never paused for approval"
            time.sleep(1)
        assert not hf_api.repo_exists(model_repo)  # nothing is published while it waits
        resume_flow_run(paused[0].id, run_input={"approve": approve, "comment": "reviewed by a test"})
    worker.join(300)
    state = box["result"]
    if approve:
        outcome = state.result()
        assert outcome.model.created and hf_api.repo_exists(model_repo)
    else:
        assert state.is_failed() and "rejected: reviewed by a test; nothing was published" in state.message
        assert not hf_api.repo_exists(model_repo)


def publish_state(result, localhub, **cfg):
    """publish_run as alice, returning the final state (the flow may fail)."""
    from hubflow.config import PublishConfig
    from hubflow.flows.publish import publish_run

    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        return publish_run(result.summary_uri, PublishConfig.model_validate(cfg), return_state=True)
    finally:
        os.environ.pop("HF_TOKEN", None)
