"""The monitor flow on localhub and a real Prefect API: a published tiny classifier (its card names the dataset,
sha and figures it was published with), batches of new rows as dataset revisions; the report artifact, the events,
and the retrain deployment's automation (deployments/prefect.yaml's trigger) starting a run on an alarm, once."""

from __future__ import annotations

import json
import random
import time
import uuid

import pytest

from tests.tiny import LABELS, make_tiny_bert, push_parquet_dataset, synthetic_rows

pytestmark = pytest.mark.usefixtures("prefect_api")


def _table(rows, labels=True):
    import pyarrow as pa

    cols = {"text": [t for t, _ in rows]}
    if labels:
        cols["label"] = [LABELS[y] for _, y in rows]
    return pa.table(cols)


def _shifted(n, seed):
    """Texts from another world: long runs of words the tiny tokenizer never saw."""
    rng = random.Random(seed)
    words = ["inverter", "photovoltaic", "wallbox", "kilowatt", "tariff", "installer", "rooftop", "grid", "meter"]
    return [(" ".join(rng.choices(words, k=rng.randint(30, 45))), rng.randrange(3)) for _ in range(n)]


@pytest.fixture(scope="module")
def published(localhub, tmp_path_factory):
    """A 'published' tiny BERT (facts + a card with hubflow lineage and model-index), its test data, and an
    incoming dataset with two revisions: fresh rows like the test split, then rows from elsewhere."""
    from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

    from hubflow.kinds.text_classification.settings import ClassifierFacts

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    data_repo, model_repo, incoming = f"alice/mon-data-{tag}", f"alice/mon-model-{tag}", f"alice/mon-in-{tag}"
    data_sha = push_parquet_dataset(api, data_repo, tmp_path_factory.mktemp("d"),
                                    {"test": _table(synthetic_rows(150, seed=1))})
    folder = make_tiny_bert(tmp_path_factory.mktemp("m"), num_labels=3)
    (folder / "hubflow.json").write_text(ClassifierFacts(task="text-classification", max_length=64,
                                                         label_names=LABELS).model_dump_json())
    common = dict(task_type="text-classification", dataset_type=data_repo, dataset_name="d", dataset_split="test",
                  dataset_revision=data_sha)
    card = ModelCardData(eval_results=[
        EvalResult(**common, metric_type="accuracy", metric_value=0.34),
        EvalResult(**common, metric_type="f1", metric_value=0.2, metric_args={"average": "macro"})],
        model_name="m", hubflow={"dataset": data_repo, "dataset_sha": data_sha})
    ModelCard(f"---\n{card.to_yaml()}\n---\n# tiny\n").save(folder / "README.md")
    api.create_repo(model_repo)
    model_sha = api.upload_folder(folder_path=str(folder), repo_id=model_repo).oid
    fresh = push_parquet_dataset(api, incoming, tmp_path_factory.mktemp("i1"),
                                 {"test": _table(synthetic_rows(150, seed=2), labels=False)})
    moved = push_parquet_dataset(api, incoming, tmp_path_factory.mktemp("i2"),
                                 {"test": _table(_shifted(150, 3), labels=False)}, exist_ok=True)
    return dict(model=model_repo, model_sha=model_sha, data=data_repo, data_sha=data_sha, incoming=incoming,
                fresh=fresh, moved=moved)


@pytest.fixture
def as_alice(localhub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    monkeypatch.setenv("HUBFLOW_STATE_DIR", str(tmp_path / "state"))


def _config(published, revision, store, **kw):
    from hubflow.monitor.settings import BatchSource, MonitorConfig

    return MonitorConfig(model_repo_id=published["model"], batch=BatchSource(source=published["incoming"],
                         revision=revision, label_column=None), artifact_store=str(store), **kw)


def _events(name, since):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    with get_client(sync_client=True) as client:
        page = client.request("POST", "/events/filter", json={"filter": EventFilter(
            event=EventNameFilter(name=[name]), occurred=EventOccurredFilter(since=since)).model_dump(mode="json"),
            "limit": 50})
    return page.json()["events"]


def test_unshifted_rows_raise_nothing_and_the_report_is_an_artifact(published, as_alice, tmp_path):
    from prefect.client.orchestration import get_client

    from hubflow.flows.monitor import monitor

    tracking = {"backend": "mlflow", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "mon"}
    state = monitor(_config(published, published["fresh"], tmp_path, tracking=tracking), return_state=True)
    out = state.result()
    assert out.model.sha == published["model_sha"] and out.events == []
    assert not out.report.drift and not out.report.degraded, [s for s in out.report.scores if s.alarm]
    report = json.loads(open(out.report_uri).read())
    assert report["reference"]["dataset"]["sha"] == published["data_sha"]  # the card's lineage, at its sha
    assert report["batch"].startswith(published["incoming"] + "@" + published["fresh"][:10])
    assert (tmp_path / "monitor" / str(state.state_details.flow_run_id) / "report.png").stat().st_size > 1000
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[state.state_details.flow_run_id])))
    (art,) = [a for a in arts if a.key == "monitor"]
    assert "| label_psi |" in art.data and "data:image/png;base64," in art.data and "no alarm" in art.data
    from mlflow import MlflowClient  # tracking on: the report is an MLflow run too

    client = MlflowClient(tracking_uri=tracking["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("mon").experiment_id])
    assert run.data.metrics["label_psi"] == next(s.value for s in out.report.scores if s.name == "label_psi")
    assert run.data.tags["hubflow.monitor.drift"] == "False" and run.data.params["model_sha"] == published["model_sha"]


def _retrain_with_the_shipped_trigger(published, store):
    """The pipeline deployed as the retrain deployment is, with deployments/prefect.yaml's alarm trigger (matched to
    this test's model) -> its id."""
    from pathlib import Path

    import yaml
    from prefect.events import DeploymentEventTrigger

    from hubflow.flows.pipeline import pipeline

    spec = yaml.safe_load((Path(__file__).parent.parent / "deployments" / "prefect.yaml").read_text())
    (retrain,) = [d for d in spec["deployments"] if d["name"] == "retrain"]
    (trigger,) = [t for t in retrain["triggers"] if "hubflow.model.drift" in t["expect"]]
    assert trigger["match"] == {"prefect.resource.id": "hub.model.demo/minilm-support-tickets"}
    assert set(trigger["expect"]) == {"hubflow.model.drift", "hubflow.model.degraded"}
    config = json.loads(json.dumps(trigger["parameters"]["config"]).replace("{{ $HUBFLOW_STORE }}", str(store)))
    assert config["data"]["revision"] == "main"  # the newest data revision
    trigger = {**trigger, "match": {"prefect.resource.id": f"hub.model.{published['model']}"},
               "parameters": {"config": {**config, "execution": {"mode": "local"}}}}
    deployment = pipeline.to_deployment(name=f"retrain-{uuid.uuid4().hex[:6]}",
                                        triggers=[DeploymentEventTrigger(**trigger)])
    return deployment.apply(), trigger["name"]


def _runs_of(deployment_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_a_shift_emits_drift_and_the_automation_starts_one_retrain(published, as_alice, tmp_path):
    from prefect.types import DateTime

    from hubflow.flows.monitor import monitor

    deployment_id, automation_name = _retrain_with_the_shipped_trigger(published, tmp_path)
    time.sleep(2)  # the trigger service loads new automations on its own loop
    since = DateTime.now("UTC").subtract(seconds=5)
    out = monitor(_config(published, published["moved"], tmp_path))
    assert out.events == ["hubflow.model.drift"]
    alarms = {s.name for s in out.report.alarms()}
    assert {"input_tokens_ks_p", "unknown_word_rise", "embedding_mmd_p"} <= alarms, out.report.scores
    deadline = time.monotonic() + 15  # the server stores events a moment after it accepted them
    while not (events := _events("hubflow.model.drift", since)) and time.monotonic() < deadline:
        time.sleep(0.5)
    (event,) = events
    assert event["resource"]["prefect.resource.id"] == f"hub.model.{published['model']}"
    assert event["resource"]["hub.model.sha"] == published["model_sha"]
    assert event["payload"]["scores"]["embedding_mmd_p"] < 0.005 and "unknown_word_rise" in event["payload"]["alarms"]
    deadline = time.monotonic() + 30
    while not (runs := _runs_of(deployment_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    (run,) = runs
    # Why it started, in the UI: the run was created by the alarm automation.
    assert run.created_by and run.created_by.type == "AUTOMATION" and run.created_by.display_value == automation_name
    assert run.parameters["config"]["data"]["revision"] == "main"
    # The next night's batch shows the same shift: reported again, but the cooldown holds the event back.
    again = monitor(_config(published, published["moved"], tmp_path))
    assert again.report.drift and again.events == []
    time.sleep(3)
    assert len(_runs_of(deployment_id)) == 1 and len(_events("hubflow.model.drift", since)) == 1
