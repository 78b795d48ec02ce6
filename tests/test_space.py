"""The demo Space, deployed on localhub (which really runs it): serves batch predictions, keeps the token secret,
rolls back a version that does not come up.

Run: `.venv/bin/pytest tests/test_space.py -q` (~80 s on 2 cores: every deploy starts a real gradio app, and
importing gradio + torch + transformers dominates).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hubflow.config import SpaceConfig
from hubflow.refs import ModelFacts, PublishedRepo
from hubflow.software import installed
from tests.tiny import LABELS, make_tiny_bert

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

TEXTS = ["the striker scored a goal in the match", "heavy rain and a storm this evening", "bank shares and the price"]
FACTS = ModelFacts(task="text-classification", max_length=128, label_names=LABELS)
FACTS_64 = FACTS.model_copy(update={"max_length": 64})
WIDGET = ["the coach said the team will win", "snow and wind over the city"]
TIMEOUT = 300  # seconds for a Space to reach RUNNING (gradio's import on 2 busy cores)


def publish_tiny_model(api, repo_id: str, folder: Path, private: bool = True) -> str:
    """A tiny BERT classifier with named labels and a card widget, uploaded as one commit; returns the sha."""
    make_tiny_bert(folder, num_labels=len(LABELS))
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(LABELS)}
    config["label2id"] = {name: i for i, name in enumerate(LABELS)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    widget = "".join(f"  - text: {t}\n" for t in WIDGET)
    (folder / "README.md").write_text(f"---\npipeline_tag: text-classification\nwidget:\n{widget}---\n# tiny\n")
    api.create_repo(repo_id, private=private)
    return api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="tiny model").oid


def artifacts_and_logs(flow_run_id) -> str:
    """Every artifact and log line a flow run left in Prefect, as one text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join([f"[{a.key}] {a.data}" for a in arts] + [log.message for log in logs])


@pytest.fixture(scope="module")
def alice(localhub):
    """HF_TOKEN = alice's token for the module: hubflow reads the token from the environment, never a parameter."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", localhub.token("alice"))
        yield localhub.token("alice")


@pytest.fixture(scope="module")
def model_repo(alice, localhub, tmp_path_factory):
    """(repo_id, sha, local folder) of a private tiny model published by alice."""
    import uuid

    from huggingface_hub import HfApi

    repo_id = f"alice/tiny-space-{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("model") / "bert"
    sha = publish_tiny_model(HfApi(endpoint=localhub.url, token=alice), repo_id, folder)
    return repo_id, sha, folder


@pytest.fixture(scope="module")
def deployed(model_repo, prefect_api):
    """The standalone flow run on the existing model repo: (SpaceDeployment, flow run id)."""
    from hubflow.flows.deploy_space import deploy_model_space

    repo_id, _, _ = model_repo
    cfg = SpaceConfig(enabled=True, hardware="cpu-upgrade", sleep_time_seconds=3600, timeout_seconds=TIMEOUT)
    state = deploy_model_space(repo_id, space=cfg, return_state=True)
    return state.result(), state.state_details.flow_run_id


def test_standalone_flow_serves_what_batch_inference_computes(deployed, model_repo, hf_api):
    from gradio_client import Client

    from hubflow.kinds.text_classification.model import predict_texts
    from hubflow.stages.space import LAST_GOOD_TAG

    deployment, _ = deployed
    repo_id, sha, folder = model_repo
    assert (deployment.space_id, deployment.stage, deployment.model.sha) == (f"{repo_id}-demo", "RUNNING", sha)
    runtime = hf_api.get_space_runtime(deployment.space_id)
    assert (runtime.stage, runtime.requested_hardware, runtime.sleep_time) == ("RUNNING", "cpu-upgrade", 3600)
    assert deployment.url == hf_api.space_info(deployment.space_id).host

    client = Client(deployment.url, verbose=False, analytics_enabled=False, download_files=False)
    for text, batch in zip(TEXTS, predict_texts(folder, TEXTS, max_length=128)):
        answer = client.predict(text, api_name="/predict")
        assert answer["label"] == batch["label"]
        confidences = {c["label"]: c["confidence"] for c in answer["confidences"]}
        assert [confidences[name] for name in LABELS] == pytest.approx(batch["probs"], abs=1e-6)

    variables = {k: v.value for k, v in hf_api.get_space_variables(deployment.space_id).items()}
    assert variables["MODEL_ID"] == repo_id and variables["MODEL_REVISION"] == sha  # pinned, not "main"
    assert json.loads(variables["EXAMPLES"]) == WIDGET  # from the model card's widget
    tags = {t.name: t.target_commit for t in hf_api.list_repo_refs(deployment.space_id, repo_type="space").tags}
    assert tags[LAST_GOOD_TAG] == deployment.sha


def test_the_publishers_token_never_reaches_the_space(deployed, alice, hf_api, tmp_path):
    """Least privilege: the private model is read with a read-only token localhub mints for the Space's runs; the
    publisher's write token is in no secret, file or variable."""
    deployment, flow_run_id = deployed
    assert set(hf_api.get_space_secrets(deployment.space_id)) == set()
    minted = hf_api.get_space_runtime(deployment.space_id).raw["localhub"]["spaceToken"]
    assert minted["minted"] and minted["role"] == "read" and minted["namespace"] == "alice"
    files = Path(hf_api.snapshot_download(deployment.space_id, repo_type="space", local_dir=tmp_path / "space"))
    scanned = [p for p in files.rglob("*") if p.is_file() and ".cache" not in p.parts]
    assert {p.name for p in scanned} >= {"app.py", "README.md", "requirements.txt", "hubflow.json"}
    for path in scanned:
        assert alice.encode() not in path.read_bytes(), path
    assert all(alice not in v.value for v in hf_api.get_space_variables(deployment.space_id).values())
    recorded = artifacts_and_logs(flow_run_id)
    assert "space-deployment" in recorded and deployment.space_id in recorded
    assert alice not in recorded


def test_space_files_pin_what_made_the_predictions(model_repo):
    """The Space runs the versions recorded with the run's predictions, not whatever the template or PyPI says:
    here a run recorded by an older install, which need not be what is installed today."""
    from hubflow.software import UnpinnedRequirement
    from hubflow.stages.space import app_files, space_variables

    repo_id, sha, _ = model_repo
    model = PublishedRepo(repo_id=repo_id, repo_type="model", sha=sha, url=f"http://hub/{repo_id}", created=False)
    recorded = {"transformers": "5.24.0", "torch": "2.13.0", "gradio": "6.31.0", "peft": "0.21.2"}
    files = app_files(model, f"{repo_id}-demo", FACTS_64, space_variables(model, WIDGET, FACTS_64), recorded)
    front = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["pinned"] is False
    assert front["sdk_version"] == "6.31.0" and front["models"] == [repo_id]
    pins = dict(line.split("==") for line in files["requirements.txt"].decode().splitlines() if "==" in line)
    assert pins == {"transformers": "5.24.0", "torch": "2.13.0"}  # the classifier's app needs no peft
    assert b"import hubflow" not in files["app.py"] and b"from tasks" not in files["app.py"]  # self-contained
    record = json.loads(files["hubflow.json"])
    assert record["variables"]["MAX_LENGTH"] == "64" and record["facts"] == FACTS_64.model_dump(mode="json")
    assert record["software"] == recorded
    with pytest.raises(UnpinnedRequirement, match="'torch'"):  # never an unpinned line
        app_files(model, f"{repo_id}-demo", FACTS_64, {}, {"transformers": "5.24.0", "gradio": "6.31.0"})


def test_space_templates_pin_nothing_by_hand():
    """A release of any dependency cannot break a Space template: the templates name packages, never versions."""
    from hubflow.kinds import all_kinds

    for kind in all_kinds():
        text = (kind.space_app / "requirements.txt").read_text() + (kind.space_app / "README.md").read_text()
        assert "==" not in text and "sdk_version: $sdk_version" in text, kind.task


def test_a_version_that_crashes_is_rolled_back(deployed, model_repo, alice, hf_api):
    """A MODEL_REVISION that does not exist makes the new app exit on start: the flow fails with the app's own
    error, and the Space is back on the last good files, RUNNING and answering."""
    from gradio_client import Client
    from prefect import flow

    from hubflow.stages.space import LAST_GOOD_TAG, SpaceDeployError
    from hubflow.tasks.release import deploy_space

    deployment, _ = deployed
    good = deployment.model
    broken = good.model_copy(update={"sha": "0" * 40})
    cfg = SpaceConfig(enabled=True, space_id=deployment.space_id, timeout_seconds=TIMEOUT)

    @flow(name="deploy-broken-space")
    def deploy_broken():
        return deploy_space(broken, cfg, FACTS, WIDGET, [(TEXTS[0], LABELS[0])], installed())

    state = deploy_broken(return_state=True)
    assert state.is_failed()
    with pytest.raises(SpaceDeployError) as err:
        state.result()
    message = str(err.value)
    assert "RUNTIME_ERROR" in message and "cannot load model" in message and "0000000000" in message
    assert "rolled back" in message and alice not in message

    head = hf_api.space_info(deployment.space_id)
    assert head.runtime.stage == "RUNNING" and head.sha != deployment.sha  # a new commit, with the good files
    record = json.loads(Path(hf_api.hf_hub_download(deployment.space_id, "hubflow.json",
                                                    repo_type="space")).read_text())
    assert record["revision"] == good.sha
    variables = {k: v.value for k, v in hf_api.get_space_variables(deployment.space_id).items()}
    assert variables["MODEL_REVISION"] == good.sha
    tags = {t.name: t.target_commit for t in hf_api.list_repo_refs(deployment.space_id, repo_type="space").tags}
    assert tags[LAST_GOOD_TAG] == head.sha
    answer = Client(head.host, verbose=False, analytics_enabled=False, download_files=False).predict(
        TEXTS[0], api_name="/predict")
    assert answer["label"] in LABELS

    recorded = artifacts_and_logs(state.state_details.flow_run_id)
    assert "space-deploy-failure" in recorded and "cannot load model" in recorded  # the app's log, attached
    assert alice not in recorded


def test_preview_env_for_a_repo_pins_the_revision(model_repo, alice):
    from hubflow.ops.preview import app_env, is_run

    repo_id, sha, _ = model_repo
    assert not is_run(repo_id) and is_run("s3://bucket/runs/x/summary.json")
    env = app_env(repo_id, "main")
    # A model published without hubflow's facts file: its tokenizer's own limit (tests/tiny.py: 128), not a default.
    assert (env["MODEL_ID"], env["MODEL_REVISION"], env["MAX_LENGTH"]) == (repo_id, sha, "128")
    assert env["HUBFLOW_TASK"] == "text-classification"
    assert json.loads(env["EXAMPLES"]) == WIDGET and "HF_TOKEN" not in env


def test_space_preview_serves_the_app_on_a_port_held_for_it(model_repo, alice, localhub, tmp_path):
    """`hubflow space preview REPO --port P` as a user runs it: the port is held from the start (a port another
    program holds is refused in one line), the app answers there like batch inference, Ctrl-C stops it."""
    import os
    import re
    import signal
    import socket
    import subprocess
    import sys
    import time

    from gradio_client import Client

    from hubflow.kinds.text_classification.model import predict_texts

    repo_id, sha, folder = model_repo
    hubflow = str(Path(sys.executable).with_name("hubflow"))
    env = {**os.environ, "HF_TOKEN": alice, "HF_ENDPOINT": localhub.url}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        refused = subprocess.run([hubflow, "space", "preview", repo_id, "--port", str(busy)], env=env,
                                 capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [f"hubflow space: --port {busy}: Address already in use "
                                                   "(--verbose shows the traceback)"], refused.stderr
    proc = subprocess.Popen([hubflow, "space", "preview", repo_id], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.monotonic() + TIMEOUT, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            found = re.search(r"Preview of \S+ at (http://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url, "the preview never said where it serves"
        answer = Client(url, verbose=False, analytics_enabled=False, download_files=False).predict(
            TEXTS[0], api_name="/predict")
        assert answer["label"] == predict_texts(folder, TEXTS[:1], max_length=128)[0]["label"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)  # the app gets 10 s to stop before it is killed; a loaded machine adds the rest
        except subprocess.TimeoutExpired:  # fail, but leave no preview behind
            proc.kill()
            raise


def test_a_wrong_answer_is_rolled_back(deployed, hf_api):
    """The new version runs, but the live app disagrees with the batch label: that is a failed deploy too."""
    from hubflow.stages.space import SpaceDeployError, deploy

    deployment, _ = deployed
    cfg = SpaceConfig(enabled=True, space_id=deployment.space_id, timeout_seconds=TIMEOUT)
    with pytest.raises(SpaceDeployError) as err:  # max_length 64: new variables and files, so a new commit
        deploy(deployment.model, cfg, FACTS_64, WIDGET, [(TEXTS[0], "no-such-label")], installed())
    message = str(err.value)
    assert "smoke test" in message and "'no-such-label'" in message and "rolled back" in message
    variables = {k: v.value for k, v in hf_api.get_space_variables(deployment.space_id).items()}
    assert variables["MAX_LENGTH"] == "128" and hf_api.get_space_runtime(deployment.space_id).stage == "RUNNING"


def test_a_first_deploy_that_crashes_has_nothing_to_roll_back_to(model_repo, alice, hf_api):
    from hubflow.stages.space import SpaceDeployError, deploy

    repo_id, sha, _ = model_repo
    broken = PublishedRepo(repo_id=repo_id, repo_type="model", sha="f" * 40, url="", created=False)
    cfg = SpaceConfig(enabled=True, space_id=f"{repo_id}-fresh", timeout_seconds=TIMEOUT)
    with pytest.raises(SpaceDeployError) as err:
        deploy(broken, cfg, FACTS, WIDGET, None, installed())
    assert "cannot load model" in str(err.value) and "nothing to roll back to" in str(err.value)
    assert "ffffffffff" in err.value.logs and alice not in err.value.logs
    assert hf_api.get_space_runtime(cfg.space_id).stage == "RUNTIME_ERROR"
