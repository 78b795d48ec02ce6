"""The `endpoint` release target on localhub (which really runs the API Space): one pipeline run on a tiny BERT
publishes the model and deploys its API; the server serves the published sha, answers through the unmodified
`InferenceClient` as the run's batch predictions, requires its token (held only as a Space secret), and a version
that does not serve is rolled back to the last good one.

Run: `.venv/bin/pytest tests/test_endpoint.py -q` (each deploy starts a real server process in localhub's sandbox);
`-m slow` adds a wrong answer's rollback and the chat and embedding kinds' endpoints.
"""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

import pytest

from hubflow.config import EndpointConfig
from hubflow.refs import PublishedRepo
from hubflow.software import installed
from tests.tiny import make_tiny_bert

TEXTS = ["the striker scored a goal in the match", "heavy rain and a storm this evening", "bank shares and the price"]
TIMEOUT = 240
CONFIG = EndpointConfig(enabled=True, max_wait_ms=2, timeout_seconds=TIMEOUT)


@pytest.fixture(scope="module")
def tokens(localhub):
    """HF_TOKEN (alice, the publisher) and HUBFLOW_ENDPOINT_TOKEN (what callers send) for the module."""
    caller = f"ep_{secrets.token_hex(16)}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", localhub.token("alice"))
        mp.setenv("HUBFLOW_ENDPOINT_TOKEN", caller)
        yield localhub.token("alice"), caller


@pytest.fixture(scope="module")
def released(tokens, localhub, tmp_path_factory, prefect_api):
    """One pipeline run on a tiny BERT and a keyword dataset with publishing (a private model) and the endpoint on
    (no demo Space): the release deploys the API Space every test here looks at."""
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
        "endpoint": CONFIG.model_dump(),
        "artifact_store": str(tmp_path_factory.mktemp("store")),
    })
    return pipeline(config)


@pytest.fixture(scope="module")
def deployed(released):
    return released.endpoint


@pytest.fixture(scope="module")
def published(released) -> PublishedRepo:
    return released.published.model


@pytest.fixture(scope="module")
def batch(released) -> list[tuple[str, str]]:
    """(text, label) of the run's batch predictions: what the endpoint must answer."""
    from hubflow.stages.predict import read_predictions

    return [(r["text"], r["pred_label"]) for r in read_predictions(released.predictions).to_pylist()]


@pytest.fixture(scope="module")
def recorded(released) -> dict[str, str]:
    """The library versions the run recorded with its predictions (what the release pinned the Space to)."""
    from hubflow.stages.predict import read_manifest

    return read_manifest(released.predictions)["software"]


def test_the_release_deploys_the_endpoint_at_the_published_sha(released, deployed, published, batch, tokens, hf_api):
    """After publishing: the API Space RUNNING, pinned to the published sha, answering every test text through the
    unmodified InferenceClient as the run's batch predictions; the run's summary in the store names it."""
    from huggingface_hub import InferenceClient
    from huggingface_hub.utils import get_session

    from hubflow.doors import store

    assert released.space is None and released.published.decision.promoted
    assert (deployed.space_id, deployed.stage, deployed.model.sha) == (f"{published.repo_id}-api", "RUNNING",
                                                                       published.sha)
    assert hf_api.get_space_runtime(deployed.space_id).stage == "RUNNING"
    client = InferenceClient(base_url=deployed.url, token=tokens[1])
    for text, label in batch:
        answer = client.text_classification(text, top_k=2)
        assert len(answer) == 2 and answer[0].label == label and answer[0].score >= answer[1].score
    info = get_session().get(f"{deployed.url}/info", headers={"authorization": f"Bearer {tokens[1]}"}).json()
    assert (info["model_id"], info["model_sha"], info["task"]) == (published.repo_id, published.sha,
                                                                   "text-classification")
    variables = {k: v.value for k, v in hf_api.get_space_variables(deployed.space_id).items()}
    assert (variables["SERVE_MODEL"], variables["SERVE_REVISION"]) == (published.repo_id, published.sha)
    summary = store.read_json(released.summary_uri)
    assert summary["endpoint"]["url"] == deployed.url and summary["endpoint"]["sha"] == deployed.sha


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


def test_the_space_runs_the_very_server_and_handler_files(deployed, recorded, hf_api):
    """app.py is server.py byte for byte (what `hubflow serve` runs); the README makes it a Docker API Space; the
    answers' libraries are pinned to what the run recorded."""
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
    assert (pins["torch"], pins["transformers"]) == (recorded["torch"], recorded["transformers"])
    assert {"fastapi", "uvicorn", "prometheus-client"} <= set(pins)


def redeploy(model: PublishedRepo, released, expected, recorded, cfg: EndpointConfig = CONFIG):
    """The stage again, with what the release gave it (the published folder's facts, the run's versions)."""
    from hubflow.stages.endpoint import deploy

    return deploy(model, cfg, released.checkpoint.facts, expected, recorded)


def test_an_unchanged_redeploy_makes_no_commit(deployed, published, released, batch, recorded):
    again = redeploy(published, released, batch[:3], recorded)
    assert (again.sha, again.stage, again.url) == (deployed.sha, "RUNNING", deployed.url)


def test_a_broken_endpoint_is_rolled_back(deployed, published, released, batch, recorded, tokens, hf_api):
    """A revision that does not exist: the server cannot load the model and exits; the deploy fails with its own
    words and the Space is back on the last good files, answering."""
    from huggingface_hub import InferenceClient

    from hubflow.stages.endpoint import smoke_test
    from hubflow.stages.space import LAST_GOOD_TAG, SpaceDeployError

    broken = published.model_copy(update={"sha": "0" * 40})
    with pytest.raises(SpaceDeployError) as err:
        redeploy(broken, released, batch[:3], recorded)
    message = str(err.value)
    assert "RUNTIME_ERROR" in message and "rolled back" in message, message
    assert tokens[0] not in message + err.value.logs and tokens[1] not in message + err.value.logs
    head = hf_api.space_info(deployed.space_id)
    assert head.runtime.stage == "RUNNING" and head.sha != deployed.sha
    variables = {k: v.value for k, v in hf_api.get_space_variables(deployed.space_id).items()}
    assert variables["SERVE_REVISION"] == published.sha
    tags = {t.name: t.target_commit for t in hf_api.list_repo_refs(deployed.space_id, repo_type="space").tags}
    assert tags[LAST_GOOD_TAG] == head.sha
    # The restored server loads the model again (503 meanwhile); then it answers like batch inference, token and all.
    smoke_test(deployed.space_id, head.host, batch, released.checkpoint.facts, tokens[1], TIMEOUT)
    assert InferenceClient(base_url=head.host, token=tokens[1]).text_classification(batch[0][0])[0].label == \
        batch[0][1]


@pytest.mark.slow
def test_a_wrong_answer_is_rolled_back(deployed, published, released, batch, recorded, hf_api):
    from hubflow.stages.space import SpaceDeployError

    cfg = CONFIG.model_copy(update={"max_wait_ms": 3})  # new variables: a new version
    with pytest.raises(SpaceDeployError) as err:
        redeploy(published, released, [(batch[0][0], "no-such-label")], recorded, cfg)
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


def tiny_chat_model(folder: Path) -> Path:
    from tests.tiny import TINY_CHAT_TEMPLATE, make_tiny_llama

    make_tiny_llama(folder, chat_template=TINY_CHAT_TEMPLATE, hidden=64)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 4096  # the server stops at the context's end; hubflow's generation did not
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "hubflow.json").write_text(json.dumps({"task": "causal-lm", "max_length": 96, "shape": "chat",
                                                     "chat": True}))
    return folder


def tiny_embedder(folder: Path) -> Path:
    from hubflow.kinds.sentence_embedding import KIND
    from hubflow.kinds.sentence_embedding import model as emb_model
    from hubflow.kinds.sentence_embedding.settings import EmbeddingFacts, EmbeddingTrain
    from hubflow.stages.facts import write_facts

    base = make_tiny_bert(folder / "base")
    embedder, tokenizer = emb_model.load_for_training(str(base), EmbeddingTrain(pooling="mean", normalize=True),
                                                      max_length=64)
    out = KIND.save_model(embedder, tokenizer, folder / "emb", base_model=None)["model"]
    write_facts(out, EmbeddingFacts(max_length=64))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("make", [tiny_chat_model, tiny_embedder], ids=["chat", "embeddings"])
def test_the_other_kinds_endpoints_answer_like_hubflows_inference(make, tokens, localhub, tmp_path):
    """A chat model's greedy answer through `chat_completion` equals hubflow's generation; an embedder's vector
    through `feature_extraction` points where hubflow's encoder's does (the kind's own comparison)."""
    from huggingface_hub import HfApi

    from hubflow.config import SpaceConfig
    from hubflow.kinds import kind_for
    from hubflow.stages.endpoint import deploy
    from hubflow.stages.facts import read_facts

    folder = make(tmp_path / "model")
    facts = read_facts(folder)
    kind, space = kind_for(facts.task), SpaceConfig()
    answers = kind.answer_texts(str(folder), TEXTS[:2], facts, space)
    repo_id = f"alice/ep-{facts.task}-{uuid.uuid4().hex[:6]}"
    api = HfApi(endpoint=localhub.url, token=tokens[0])
    api.create_repo(repo_id)
    sha = api.upload_folder(folder_path=folder, repo_id=repo_id).oid
    model = PublishedRepo(repo_id=repo_id, repo_type="model", sha=sha, url=f"{localhub.url}/{repo_id}", created=True)
    deployed = deploy(model, EndpointConfig(enabled=True, timeout_seconds=TIMEOUT), facts,
                      list(zip(TEXTS[:2], answers)), installed(),
                      answer_tokens=getattr(kind.own(space), "max_new_tokens", 64))
    assert deployed.stage == "RUNNING" and deployed.model.sha == sha  # its smoke test compared every answer
