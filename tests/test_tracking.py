"""Tracking in MLflow (issue 20): a real `mlflow server` (SQLite backend, artifacts in a folder) on loopback, the
pipeline on localhub with a tiny BERT, and what a user sees through MlflowClient: the run, its params, the loss curve
with a point per step, each epoch's validation, the pinned shas and the Prefect run as tags, the report as
artifacts, the published model as a registry version pointing at its Hub repo and sha, the card linking the run.
Also: the training-observer contract in the loop (every step, StopTrial, a failing watcher), an unreachable server
(one warning, the run completes), the default local store (SQLite under the artifact store's `mlruns`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from hubflow.config import TrainConfig
from hubflow.refs import PinnedRepo
from hubflow.stages import observers
from tests.test_pipeline import tiny_config
from tests.tiny import make_tiny_bert, make_tiny_tokenized, push_demo_dataset, push_tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = PinnedRepo(repo_id="tiny/bert", repo_type="model", revision="main", sha="0" * 40)


# --- the observer contract, in the training loop ---


class Recorder:
    def __init__(self, stop_at_eval: int | None = None):
        self.calls, self.stop_at_eval, self.evals = [], stop_at_eval, 0

    def on_start(self, facts):
        self.calls.append(("start", facts))

    def on_step(self, step, loss, lr):
        self.calls.append(("step", step, loss, lr))

    def on_evaluate(self, step, epoch, metrics):
        self.calls.append(("eval", step, epoch, metrics))
        self.evals += 1
        if self.stop_at_eval == self.evals:
            raise observers.StopTrial("pruned at the first evaluation")

    def on_end(self, result, error):
        self.calls.append(("end", result, error))


class Broken(Recorder):
    def on_step(self, step, loss, lr):
        raise ConnectionError("tracking server went away")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model_dir = make_tiny_bert(root / "bert")
    return model_dir, make_tiny_tokenized(root / "tokenized", model_dir)


def _train(tiny, out, watchers, monkeypatch):
    from hubflow.stages import train

    monkeypatch.setattr(train, "build_observers", lambda spec: observers.Observers(watchers))
    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=5e-3, seed=0)
    return train.train_model(tiny[1], str(tiny[0]), BASE, cfg, str(out), observe=None)


def test_an_observer_sees_every_step_each_evaluation_and_the_end(tiny, tmp_path, monkeypatch, caplog):
    seen, broken = Recorder(), Broken()
    ref = _train(tiny, tmp_path / "run", [seen, broken], monkeypatch)
    kinds = [c[0] for c in seen.calls]
    steps = [c[1] for c in seen.calls if c[0] == "step"]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("eval") == 2
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 30  # 240 rows / 16 per step, 2 epochs
    assert seen.calls[0][1]["base_model"]["sha"] == BASE.sha and seen.calls[0][1]["total_steps"] == 30
    evals = [c for c in seen.calls if c[0] == "eval"]
    assert [e[1] for e in evals] == [15, 30] and evals[-1][3].keys() == ref.metrics.keys()
    result, error = seen.calls[-1][1:]
    assert error is None and result["samples_per_second"] > 0 and result["peak_rss_mb"] > 0
    # the watcher that failed was switched off with one warning; the training did not notice
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [
        "Broken failed in on_step and is switched off for this run: tracking server went away"]


def test_stop_trial_stops_the_training_at_that_evaluation(tiny, tmp_path, monkeypatch):
    seen = Recorder(stop_at_eval=1)
    with pytest.raises(observers.StopTrial, match="pruned"):
        _train(tiny, tmp_path / "run", [seen], monkeypatch)
    assert max(c[1] for c in seen.calls if c[0] == "step") == 15
    assert seen.calls[-1][0] == "end" and seen.calls[-1][2].startswith("stopped")
    assert not (tmp_path / "run" / "model").exists()
    assert (tmp_path / "run" / "stopped.json").exists()


def test_without_the_extra_tracking_is_one_line(monkeypatch):
    from hubflow.tracking import client

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(client.TrackingUnavailable, match=r"pip install 'hubflow\[tracking\]'$"):
        client.connect("http://127.0.0.1:1")


def test_credentials_in_the_tracking_uri_are_refused_in_one_line():
    from hubflow.config import RecipeError, load_recipe, one_line

    with pytest.raises(Exception) as e:
        load_recipe("deployments/configs/demo.yaml", ["tracking.backend=mlflow", "tracking.uri=https://u:pw@ml:5000"])
    assert not isinstance(e.value, RecipeError)
    assert one_line(e.value).startswith("tracking.uri: no credentials in the URI") and "pw" not in one_line(e.value)


def test_a_server_that_goes_away_mid_run_is_one_warning(caplog):
    from hubflow.refs import TrackingTarget
    from hubflow.tracking import runs
    from localhub import free_port

    gone = TrackingTarget(uri=f"http://127.0.0.1:{free_port()}", experiment="x", run_id=uuid.uuid4().hex)
    with caplog.at_level(logging.WARNING):
        assert runs.finish(gone) is None and runs.finish(gone, "boom") is None
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith("MLflow tracking is off for this run: the MLflow tracking "
                                                     f"server at {gone.uri} does not answer"), warned


# --- a real MLflow server, the pipeline on localhub ---


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on loopback with a SQLite backend and a folder for artifacts; stopped by its process group."""
    from localhub import free_port

    root, port = tmp_path_factory.mktemp("mlflow"), free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its own group: uvicorn and a job runner
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)  # uvicorn waits for keep-alive connections (the clients' pools) to close
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def hub_repos(localhub, tmp_path_factory):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    model_repo, data_repo = f"alice/tiny-bert-{tag}", f"alice/tickets-{tag}"
    model_sha = push_tiny_bert(api, model_repo, tmp_path_factory.mktemp("tiny-bert"), num_labels=4)
    data_sha = push_demo_dataset(api, data_repo, tmp_path_factory.mktemp("tickets"))
    return {"model": model_repo, "model_sha": model_sha, "data": data_repo, "data_sha": data_sha, "api": api,
            "target": f"alice/tracked-{tag}"}


def _pipeline(localhub, config):
    from hubflow.flows.pipeline import pipeline

    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        state = pipeline(config, return_state=True)
    finally:
        os.environ.pop("HF_TOKEN", None)
    assert state.is_completed(), state.message
    return state


@pytest.fixture(scope="module")
def local_run(prefect_api, localhub, hub_repos, tmp_path_factory, monkeypatch_module):
    """The pipeline with `tracking.backend: mlflow` and nothing else said: the local default store; published."""
    store = tmp_path_factory.mktemp("store")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tiny_config(hub_repos, store, train__epochs=2, publish__enabled=True,
                         publish__repo_id=hub_repos["target"], tracking__backend="mlflow")
    return store, _pipeline(localhub, config)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_tracked(state, hub_repos, target: str, secret: str) -> None:
    """What a user finds in MLflow after a tracked, published run."""
    from hubflow.doors import store as st

    result = state.result()
    client = _client(result.tracking.uri)
    run = client.get_run(result.tracking.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == target  # the default: the publish target
    params, tags = run.data.params, run.data.tags
    assert params["train.learning_rate"] == "0.001" and params["train.epochs"] == "2"
    assert params["model.repo_id"] == hub_repos["model"] and params["publish.repo_id"] == target
    assert tags["hubflow.base_model_sha"] == hub_repos["model_sha"]
    assert tags["hubflow.dataset_sha"] == hub_repos["data_sha"]
    assert tags["hubflow.task"] == "text-classification"
    assert tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert tags.get("prefect.flow_run_url") == result.flow_run_url  # the Prefect run's page, when the API has a UI
    # a point per optimizer step (as the loop read them), a validation per epoch, test metrics, system figures
    history = st.read_json(result.checkpoint.history_uri)
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [s["step"] for s in history["steps"]] and len(losses) == 30
    assert [round(m.value, 5) for m in losses] == [round(s["loss"], 5) for s in history["steps"]]
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 30
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [15, 30]
    metrics = run.data.metrics
    assert metrics["test_accuracy"] == pytest.approx(result.evaluation.metrics["accuracy"])
    assert metrics["system/samples_per_second"] > 0 and metrics["system/peak_rss_mb"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "evaluation"} <= artifacts and not any(a.startswith("model") for a in artifacts)
    # the published model, registered as a pointer to the Hub repo at its sha (no copy of the weights)
    published = result.published.model
    version = client.get_model_version(published.repo_id.replace("/", "--"), "1")
    assert version.source == f"hf://{published.repo_id}@{published.sha}" and version.run_id == run.info.run_id
    assert version.tags["hubflow.hub_url"] == published.url
    # no secret reached the params or tags
    assert not any(secret in v for v in [*params.values(), *tags.values()])


def card_of(state, localhub) -> str:
    from huggingface_hub import hf_hub_download

    published = state.result().published.model
    return Path(hf_hub_download(published.repo_id, "README.md", revision=published.sha, endpoint=localhub.url,
                                token=localhub.token("alice"))).read_text()


def test_a_tracked_run_in_the_default_local_store(local_run, hub_repos, localhub):
    store, state = local_run
    result = state.result()
    db = Path(store).resolve() / "mlruns" / "mlflow.db"
    assert result.tracking.uri == f"sqlite:///{db}" and db.exists()
    check_tracked(state, hub_repos, hub_repos["target"], localhub.token("alice"))
    run = _client(result.tracking.uri).get_run(result.tracking.run_id)
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(db.parent)  # not the cwd's ./mlruns
    assert run.info.run_name == f"pipeline-{result.flow_run_id[:8]}"
    # the same published sha again (a rerun that changed nothing on the Hub) is the same version, not a second one
    from hubflow.tracking import runs

    assert str(runs.register(result.tracking, result).version) == "1"
    name = result.published.model.repo_id.replace("/", "--")
    assert len(_client(result.tracking.uri).search_model_versions(f"name = '{name}'")) == 1
    assert f"Tracked in MLflow as run `{result.tracking.run_id}` of the experiment `{hub_repos['target']}`" in card_of(
        state, localhub)


def test_a_cached_training_still_gets_its_loss_curve(local_run, hub_repos, localhub):
    store, _ = local_run
    config = tiny_config(hub_repos, store, train__epochs=2, tracking__backend="mlflow", tracking__experiment="again")
    result = _pipeline(localhub, config).result()
    client = _client(result.tracking.uri)
    assert client.get_experiment_by_name("again") is not None
    assert len(client.get_metric_history(result.tracking.run_id, "loss")) == 30  # from the training's history
    assert client.get_run(result.tracking.run_id).info.status == "FINISHED"


def test_a_sweeps_run_names_its_best_trial(local_run):
    from hubflow.refs import SweepRecord
    from hubflow.tracking import client as mlf
    from hubflow.tracking import runs

    _, state = local_run
    result = state.result()
    target = mlf.open_run(mlf.connect(result.tracking.uri), result.tracking.model_copy(
        update={"run_id": None, "experiment": "sweeps", "run_name": "sweep-1"}), {}, {})
    record = SweepRecord(study="s", storage="journal", space={"train.learning_rate": "log_uniform [1e-05, 0.01]"},
                         metric="macro_f1", direction="higher", trials=4, complete=2, pruned=1, failed=1,
                         best_trial=3, best_value=0.75, best_params={"train.learning_rate": 0.002})
    runs.record(target, result.model_copy(update={"sweep": record}))
    run = _client(target.uri).get_run(target.run_id)
    assert run.data.tags["hubflow.sweep_best_trial"] == "3" and run.data.metrics["sweep_best_eval_macro_f1"] == 0.75
    assert run.data.tags["hubflow.sweep_best.train.learning_rate"] == "0.002"
    assert run.data.tags["hubflow.sweep_trials"] == "4 (2 complete, 1 pruned, 1 failed)"


def test_a_failed_run_ends_failed_in_mlflow(local_run, hub_repos, localhub, monkeypatch):
    from hubflow.flows import pipeline as flow_module

    def lost(*args, **kwargs):
        raise RuntimeError("the predict worker was lost")

    store, _ = local_run
    monkeypatch.setattr(flow_module.dispatch, "predict", lost)  # a stage failing after the MLflow run opened
    config = tiny_config(hub_repos, store, train__epochs=2, tracking__backend="mlflow", tracking__experiment="fails")
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        state = flow_module.pipeline(config, return_state=True)
    finally:
        os.environ.pop("HF_TOKEN", None)
    assert state.is_failed()
    db = Path(store).resolve() / "mlruns" / "mlflow.db"
    client = _client(f"sqlite:///{db}")
    [run] = client.search_runs([client.get_experiment_by_name("fails").experiment_id])
    assert run.info.status == "FAILED" and "predict worker was lost" in run.data.tags["hubflow.error"]
    assert run.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)


def test_an_unreachable_server_is_one_warning_and_the_run_completes(local_run, hub_repos, localhub, caplog):
    from localhub import free_port

    store, _ = local_run
    closed = f"http://127.0.0.1:{free_port()}"
    config = tiny_config(hub_repos, store, train__epochs=2, tracking__backend="mlflow", tracking__uri=closed)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        state = _pipeline(localhub, config)
    assert state.result().tracking is None
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "MLflow" in r.getMessage()]
    assert len(warned) == 1 and closed in warned[0], warned
    assert time.monotonic() - started < 60  # no minutes of retries against the closed port


@pytest.mark.slow
def test_a_tracking_server_gets_the_run_the_registry_version_and_the_links(
        prefect_api, localhub, hub_repos, mlflow_server, tmp_path_factory):
    """The same over MLflow's REST API: a real `mlflow server`; the card and the Prefect run link the run's page."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    target = hub_repos["target"] + "-server"
    config = tiny_config(hub_repos, tmp_path_factory.mktemp("store"), train__epochs=2, publish__enabled=True,
                         publish__repo_id=target, tracking__backend="mlflow", tracking__uri=mlflow_server)
    state = _pipeline(localhub, config)
    check_tracked(state, hub_repos, target, localhub.token("alice"))
    tracking = state.result().tracking
    assert tracking.url.startswith(f"{mlflow_server}/#/experiments/")
    assert f"Tracked in MLflow as run [{tracking.run_id}]({tracking.url})" in card_of(state, localhub)
    with get_client(sync_client=True) as client:
        links = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["mlflow-run"])))
    assert any(tracking.url in (a.data or "") for a in links)


# --- a sweep's trials: child runs of the sweep's run ---


def _sweep_parent(tmp_path):
    from hubflow.refs import TrackingTarget
    from hubflow.tracking import client as mlf

    target = TrackingTarget(uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", experiment="sweep")
    parent = mlf.open_run(mlf.connect(target.uri), target, {}, {"hubflow.sweep": "demo"})
    return parent, parent.model_copy(update={"run_id": None, "parent_run_id": parent.run_id, "run_name": "trial-0"})


def test_sweep_trials_are_child_runs_and_a_pruned_one_ends_killed(tiny, tmp_path, monkeypatch):
    from hubflow.refs import ObserveSpec
    from hubflow.stages import train

    parent, trial = _sweep_parent(tmp_path)
    real = observers.build_observers
    pruner = Recorder(stop_at_eval=1)
    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=5e-3, seed=0)
    train.train_model(tiny[1], str(tiny[0]), BASE, cfg, str(tmp_path / "t0"), observe=ObserveSpec(tracking=trial))
    monkeypatch.setattr(train, "build_observers", lambda spec: observers.Observers(real(spec).observers + [pruner]))
    with pytest.raises(observers.StopTrial):
        train.train_model(tiny[1], str(tiny[0]), BASE, cfg.model_copy(update={"learning_rate": 1e-2}),
                          str(tmp_path / "t1"), observe=ObserveSpec(tracking=trial.model_copy(
                              update={"run_name": "trial-1"})))
    client = _client(parent.uri)
    children = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("sweep").experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'")}
    assert children.keys() == {"trial-0", "trial-1"}
    done, pruned = children["trial-0"], children["trial-1"]
    assert done.info.status == "FINISHED" and pruned.info.status == "KILLED"
    assert done.data.params["train.learning_rate"] == "0.005" and pruned.data.params["train.learning_rate"] == "0.01"
    assert len(client.get_metric_history(done.info.run_id, "loss")) == 30
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "eval_loss")] == [15]
    assert done.data.tags["hubflow.base_model_sha"] == BASE.sha


@pytest.mark.slow
def test_torchruns_main_rank_tracks_a_launched_training(tiny, tmp_path, monkeypatch):
    """The ObserveSpec crosses into torchrun's ranks as JSON; only the main rank logs (2 CPU processes)."""
    from hubflow.refs import ObserveSpec
    from hubflow.stages.launch import launch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    parent, trial = _sweep_parent(tmp_path)
    cfg = TrainConfig(epochs=1, batch_size=16, learning_rate=5e-3, seed=0)
    lines: list[str] = []
    launch(tiny[1], str(tiny[0]), BASE, cfg, str(tmp_path / "run"), 2, False, lines.append,
           observe=ObserveSpec(tracking=trial))
    client = _client(parent.uri)
    [child] = client.search_runs([client.get_experiment_by_name("sweep").experiment_id],
                                 filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    assert child.info.status == "FINISHED" and child.data.tags["hubflow.processes"] == "2", "\n".join(lines[-30:])
    assert len(client.get_metric_history(child.info.run_id, "loss")) == 8  # 240 rows / (16 x 2 ranks) per step
