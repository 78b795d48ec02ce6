"""The `endpoint` release target on localhub (which really runs the API Space): the server serves the published sha,
answers through the unmodified `InferenceClient` as batch inference does, requires its token, rolls back a version
that does not serve; and the release deploys it after publishing.

Run: `.venv/bin/pytest tests/test_endpoint.py -q` (each deploy starts a real server process in localhub's sandbox).
"""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

import pytest

from hubflow.config import EndpointConfig
from hubflow.refs import ModelFacts, PublishedRepo
from hubflow.software import installed
from tests.tiny import LABELS, make_tiny_bert

TEXTS = ["the striker scored a goal in the match", "heavy rain and a storm this evening", "bank shares and the price"]
FACTS = ModelFacts(task="text-classification", max_length=128, label_names=LABELS)
TIMEOUT = 240


@pytest.fixture(scope="module")
def tokens(localhub):
    """HF_TOKEN (alice, the publisher) and HUBFLOW_ENDPOINT_TOKEN (what callers send) for the module."""
    caller = f"ep_{secrets.token_hex(16)}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", localhub.token("alice"))
        mp.setenv("HUBFLOW_ENDPOINT_TOKEN", caller)
        yield localhub.token("alice"), caller


@pytest.fixture(scope="module")
def model(tokens, localhub, tmp_path_factory):
    """A private tiny BERT classifier as hubflow publishes one (named labels, hubflow.json): (PublishedRepo, folder)."""
    from huggingface_hub import HfApi

    folder = make_tiny_bert(tmp_path_factory.mktemp("model") / "bert", num_labels=len(LABELS))
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(LABELS)}
    config["label2id"] = {name: i for i, name in enumerate(LABELS)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "hubflow.json").write_text(FACTS.model_dump_json())
    repo_id = f"alice/tiny-endpoint-{uuid.uuid4().hex[:8]}"
    api = HfApi(endpoint=localhub.url, token=tokens[0])
    api.create_repo(repo_id, private=True)
    sha = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="tiny model").oid
    return PublishedRepo(repo_id=repo_id, repo_type="model", sha=sha, url=f"{localhub.url}/{repo_id}",
                         created=True), folder


@pytest.fixture(scope="module")
def batch(model):
    """(text, label) as hubflow's batch inference predicts them: what the endpoint must answer."""
    from hubflow.kinds.text_classification.model import predict_texts

    _, folder = model
    return [(t, p["label"]) for t, p in zip(TEXTS, predict_texts(folder, TEXTS, max_length=FACTS.max_length))]


@pytest.fixture(scope="module")
def deployed(model, batch):
    from hubflow.stages.endpoint import deploy

    published, _ = model
    cfg = EndpointConfig(enabled=True, max_wait_ms=2, timeout_seconds=TIMEOUT)
    return deploy(published, cfg, FACTS, batch, installed())


def test_the_endpoint_serves_the_published_sha_like_batch_inference(deployed, model, batch, tokens, hf_api):
    from huggingface_hub import InferenceClient

    published, _ = model
    assert (deployed.space_id, deployed.stage, deployed.model.sha) == (f"{published.repo_id}-api", "RUNNING",
                                                                       published.sha)
    assert hf_api.get_space_runtime(deployed.space_id).stage == "RUNNING"
    client = InferenceClient(base_url=deployed.url, token=tokens[1])
    for text, label in batch:
        answer = client.text_classification(text, top_k=2)
        assert len(answer) == 2 and answer[0].label == label and answer[0].score >= answer[1].score
    from huggingface_hub.utils import get_session

    info = get_session().get(f"{deployed.url}/info", headers={"authorization": f"Bearer {tokens[1]}"}).json()
    assert (info["model_id"], info["model_sha"], info["task"]) == (published.repo_id, published.sha,
                                                                   "text-classification")
    variables = {k: v.value for k, v in hf_api.get_space_variables(deployed.space_id).items()}
    assert (variables["SERVE_MODEL"], variables["SERVE_REVISION"]) == (published.repo_id, published.sha)


def test_the_endpoint_requires_its_token_and_holds_it_only_as_a_secret(deployed, tokens, hf_api, tmp_path):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import get_session

    publisher, caller = tokens
    for token in (None, "not-the-token"):  # None: the client sends the Hub token (HF_TOKEN), not the endpoint's
        with pytest.raises(HfHubHTTPError) as err:
            InferenceClient(base_url=deployed.url, token=token).text_classification(TEXTS[0])
        assert err.value.response.status_code == 401
    anonymous = get_session().post(deployed.url, json={"inputs": TEXTS[0]})
    assert anonymous.status_code == 401 and caller not in anonymous.text
    assert "SERVE_TOKEN" in hf_api.get_space_secrets(deployed.space_id)
    files = Path(hf_api.snapshot_download(deployed.space_id, repo_type="space", local_dir=tmp_path / "space"))
    scanned = [p for p in files.rglob("*") if p.is_file() and ".cache" not in p.parts]
    assert {p.name for p in scanned} >= {"app.py", "handler.py", "requirements.txt", "Dockerfile", "README.md",
                                         "hubflow.json"}
    for path in scanned:
        assert caller.encode() not in path.read_bytes() and publisher.encode() not in path.read_bytes(), path
    assert all(caller not in v.value for v in hf_api.get_space_variables(deployed.space_id).values())


def test_the_space_runs_the_very_server_and_handler_files(deployed, hf_api):
    """app.py is server.py byte for byte (what `hubflow serve` runs); the README makes it a Docker API Space."""
    import yaml

    from hubflow.kinds import kind_for
    from hubflow.serving import SERVER_FILE

    read = lambda path: Path(hf_api.hf_hub_download(deployed.space_id, path, repo_type="space",  # noqa: E731
                                                    revision=deployed.sha)).read_bytes()
    assert read("app.py") == SERVER_FILE.read_bytes()
    assert read("handler.py") == kind_for("text-classification").serve_handler.read_bytes()
    front = yaml.safe_load(read("README.md").decode().split("---")[1])
    assert (front["sdk"], front["app_port"], front["app_file"]) == ("docker", 7860, "app.py")
    pins = dict(line.split("==") for line in read("requirements.txt").decode().splitlines() if "==" in line)
    assert pins["torch"] == installed()["torch"] and {"transformers", "fastapi", "uvicorn"} <= set(pins)


def test_an_unchanged_redeploy_makes_no_commit(deployed, model, batch):
    from hubflow.stages.endpoint import deploy

    published, _ = model
    again = deploy(published, EndpointConfig(enabled=True, max_wait_ms=2, timeout_seconds=TIMEOUT), FACTS, batch,
                   installed())
    assert (again.sha, again.stage, again.url) == (deployed.sha, "RUNNING", deployed.url)


def test_a_broken_endpoint_is_rolled_back(deployed, model, batch, tokens, hf_api):
    """A revision that does not exist: the server cannot load the model and exits; the deploy fails with its own
    words and the Space is back on the last good files, answering."""
    from huggingface_hub import InferenceClient

    from hubflow.stages.endpoint import deploy
    from hubflow.stages.space import LAST_GOOD_TAG, SpaceDeployError

    published, _ = model
    broken = published.model_copy(update={"sha": "0" * 40})
    with pytest.raises(SpaceDeployError) as err:
        deploy(broken, EndpointConfig(enabled=True, max_wait_ms=2, timeout_seconds=TIMEOUT), FACTS, batch,
               installed())
    message = str(err.value)
    assert "RUNTIME_ERROR" in message and "rolled back" in message, message
    assert tokens[0] not in message + err.value.logs and tokens[1] not in message + err.value.logs
    head = hf_api.space_info(deployed.space_id)
    assert head.runtime.stage == "RUNNING" and head.sha != deployed.sha
    variables = {k: v.value for k, v in hf_api.get_space_variables(deployed.space_id).items()}
    assert variables["SERVE_REVISION"] == published.sha
    tags = {t.name: t.target_commit for t in hf_api.list_repo_refs(deployed.space_id, repo_type="space").tags}
    assert tags[LAST_GOOD_TAG] == head.sha
    from hubflow.stages.endpoint import smoke_test

    # The restored server loads the model again (503 meanwhile); then it answers like batch inference, token and all.
    smoke_test(deployed.space_id, head.host, batch, FACTS, tokens[1], TIMEOUT)
    assert InferenceClient(base_url=head.host, token=tokens[1]).text_classification(TEXTS[0])[0].label == batch[0][1]


def test_a_wrong_answer_is_rolled_back(deployed, model, batch, hf_api):
    from hubflow.stages.endpoint import deploy
    from hubflow.stages.space import SpaceDeployError

    published, _ = model
    cfg = EndpointConfig(enabled=True, max_wait_ms=3, timeout_seconds=TIMEOUT)  # new variables: a new version
    with pytest.raises(SpaceDeployError) as err:
        deploy(published, cfg, FACTS, [(TEXTS[0], "no-such-label")], installed())
    assert "smoke test" in str(err.value) and "'no-such-label'" in str(err.value) and "rolled back" in str(err.value)
    variables = {k: v.value for k, v in hf_api.get_space_variables(deployed.space_id).items()}
    assert variables["SERVE_MAX_WAIT_MS"] == "2"


def test_the_release_checks_the_endpoint_before_anything_trains(monkeypatch, localhub):
    """No caller token, or an endpoint repo the token cannot write: the run stops before training, in one line."""
    from prefect.logging import disable_run_logger

    from hubflow.config import PublishConfig, SpaceConfig
    from hubflow.errors import PreflightError
    from hubflow.tasks.release import check_release_targets

    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    monkeypatch.delenv("HUBFLOW_ENDPOINT_TOKEN", raising=False)
    publish = PublishConfig(enabled=True, repo_id="alice/m")
    check = lambda endpoint: check_release_targets.fn("b/base", "d/data", publish, SpaceConfig(), endpoint)  # noqa: E731
    with disable_run_logger():
        with pytest.raises(PreflightError, match="HUBFLOW_ENDPOINT_TOKEN"):
            check(EndpointConfig(enabled=True))
        check(EndpointConfig(enabled=False))  # off: no token needed
        monkeypatch.setenv("HUBFLOW_ENDPOINT_TOKEN", "t")
        with pytest.raises(PreflightError, match="endpoint.repo_id='bob/api'"):
            check(EndpointConfig(enabled=True, repo_id="bob/api"))
        check(EndpointConfig(enabled=True))


def test_recipes_without_an_endpoint_section_stay_valid():
    from hubflow.config import PipelineConfig, load_recipe

    for recipe in Path(__file__).parents[1].glob("deployments/configs/*.yaml"):
        assert isinstance(load_recipe(recipe).endpoint, EndpointConfig), recipe
    config = PipelineConfig.model_validate({"model": {"repo_id": "a/b"}, "data": {"source": "c/d"},
                                            "endpoint": {"enabled": True, "max_queue": 8}})
    assert config.endpoint.max_queue == 8 and config.endpoint.repo_id is None
    with pytest.raises(ValueError, match="endpoint.repo_id"):
        EndpointConfig(repo_id="bad/id..")


@pytest.fixture(scope="module")
def released(tokens, localhub, tmp_path_factory, prefect_api):
    """One pipeline run on a tiny BERT and a keyword dataset with publishing and the endpoint on (no demo Space)."""
    from huggingface_hub import HfApi

    from hubflow.config import PipelineConfig
    from hubflow.flows.pipeline import pipeline
    from tests.tiny import push_keyword_dataset, push_tiny_bert

    api, tag = HfApi(endpoint=localhub.url, token=tokens[0]), uuid.uuid4().hex[:6]
    base, data = f"alice/ep-{tag}-base", f"alice/ep-{tag}-data"
    push_tiny_bert(api, base, tmp_path_factory.mktemp("bert"))
    push_keyword_dataset(api, data, tmp_path_factory.mktemp("data"), {"train": 96, "validation": 16, "test": 24})
    config = PipelineConfig.model_validate({
        "model": {"repo_id": base}, "data": {"source": data}, "preprocess": {"max_length": 32},
        "train": {"max_steps": 4, "batch_size": 16, "learning_rate": 5e-3, "seed": 0},
        "inference": {"batch_size": 32, "shard_size": 25},
        "publish": {"enabled": True, "repo_id": f"alice/ep-{tag}-model"},
        "endpoint": {"enabled": True, "timeout_seconds": TIMEOUT},
        "artifact_store": str(tmp_path_factory.mktemp("store")),
    })
    return pipeline(config)


def test_the_release_deploys_the_endpoint_at_the_published_sha(released, tokens, hf_api):
    """After publishing: the API Space RUNNING, pinned to the published sha, answering every test text as the
    run's batch predictions; the run's summary in the store names it."""
    from huggingface_hub import InferenceClient

    from hubflow.doors import store
    from hubflow.stages.predict import read_predictions

    endpoint, model = released.endpoint, released.published.model
    assert endpoint is not None and released.space is None
    assert (endpoint.space_id, endpoint.stage, endpoint.model.sha) == (f"{model.repo_id}-api", "RUNNING", model.sha)
    variables = {k: v.value for k, v in hf_api.get_space_variables(endpoint.space_id).items()}
    assert variables["SERVE_REVISION"] == model.sha
    client = InferenceClient(base_url=endpoint.url, token=tokens[1])
    rows = read_predictions(released.predictions).to_pylist()
    for row in rows[:8]:
        assert client.text_classification(row["text"])[0].label == row["pred_label"], row
    summary = store.read_json(released.summary_uri)
    assert summary["endpoint"]["url"] == endpoint.url and summary["endpoint"]["sha"] == endpoint.sha
