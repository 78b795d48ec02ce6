"""Hyper-parameter sweeps on localhub and Prefect's test API, with a tiny BERT, in local mode.

Covers: the best trial (by the validation metric) is the model published, and its card names the sweep, its space
and the trial count; a trial that cannot learn is pruned at its first evaluation, before its last epoch; a killed
sweep (a trial left RUNNING in the study) rerun with the same storage keeps its finished trials and runs only the
missing one, with the killed trial's parameters; a space key that is not a recipe field fails before anything trains,
in one line (the command and the flow); the flow's run form is typed.
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.tiny import push_demo_dataset, push_tiny_bert

pytestmark = pytest.mark.usefixtures("prefect_api", "one_torch_thread")

GOOD, BAD = 3e-3, 1e-9  # a learning rate that learns the tickets in an epoch, and one that cannot move the weights


@pytest.fixture(scope="module")
def hub_repos(localhub, tmp_path_factory):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    tag = uuid.uuid4().hex[:6]
    model_repo, data_repo = f"alice/sweep-bert-{tag}", f"alice/sweep-tickets-{tag}"
    push_tiny_bert(api, model_repo, tmp_path_factory.mktemp("bert"), num_labels=4)
    push_demo_dataset(api, data_repo, tmp_path_factory.mktemp("tickets"))
    return {"model": model_repo, "data": data_repo, "tag": tag}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture()
def alice(localhub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))


def recipe(hub_repos, store, **publish) -> dict:
    return {
        "model": {"repo_id": hub_repos["model"]},
        "data": {"source": hub_repos["data"], "max_train_samples": 240, "max_eval_samples": 60,
                 "max_test_samples": 60},
        "preprocess": {"max_length": 32},
        "train": {"epochs": 2, "batch_size": 16, "learning_rate": GOOD, "checkpoint_every_steps": 100},
        "inference": {"batch_size": 32, "shard_size": 60},
        "publish": publish or {"enabled": False},
        "artifact_store": str(store),
    }


def load(raw: dict, sweep: dict):
    from hubflow.config import PipelineConfig
    from hubflow.experiments.space import SweepConfig

    return PipelineConfig.model_validate(raw), SweepConfig.model_validate(sweep)


def trial_runs(flow_run_id) -> list[str]:
    """The trial task runs of a sweep's flow run, by name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(r.name for r in runs if r.name.startswith("trial-"))


def study_of(result):
    import optuna

    from hubflow.experiments.study import open_storage, storage_url

    url = storage_url(None, result.config.artifact_store, result.sweep.study)
    return optuna.load_study(study_name=result.sweep.study, storage=open_storage(url))


@pytest.fixture(scope="module")
def published_sweep(hub_repos, store, localhub):
    """4 trials over {GOOD, BAD}: trial 0 is the recipe's (GOOD); median pruning once one trial has finished."""
    from hubflow.flows.sweep import sweep_flow

    target = f"alice/swept-{hub_repos['tag']}"
    raw = {**recipe(hub_repos, store, enabled=True, repo_id=target), "tracking": {"backend": "mlflow"}}
    config, sweep = load(raw,
                         {"space": {"train.learning_rate": {"distribution": "choice", "choices": [GOOD, BAD]}},
                          "trials": 4, "pruner": "median", "startup_trials": 1, "seed": 3})
    os.environ["HF_TOKEN"] = localhub.token("alice")
    try:
        state = sweep_flow(config, sweep, return_state=True)
    finally:
        os.environ.pop("HF_TOKEN", None)
    assert state.is_completed(), state.message
    return state.result(), target


def test_the_best_trial_is_published_and_its_card_names_the_sweep(published_sweep, localhub):
    from huggingface_hub import ModelCard

    result, target = published_sweep
    study = study_of(result)
    best = study.best_trial
    assert best.value == max(t.value for t in study.trials if t.state.name == "COMPLETE")
    assert result.sweep.best_trial == best.number and result.sweep.trials == 4
    assert result.config.train.learning_rate == best.params["train.learning_rate"] == GOOD
    assert result.checkpoint.fingerprint == best.user_attrs["checkpoint"]["fingerprint"]

    card = ModelCard.load(target, token=localhub.token("alice"))
    assert result.published.model.repo_id == target
    assert card.data.hubflow["model_fingerprint"] == result.checkpoint.fingerprint  # the best trial's weights
    assert "## Hyper-parameter sweep" in card.text
    assert result.sweep.study in card.text and "4 trials" in card.text
    assert f"| train.learning_rate | choice {{{GOOD:g}, {BAD:g}}} | {GOOD} |" in card.text


def test_the_sweep_is_an_mlflow_run_and_its_trials_child_runs(published_sweep):
    from mlflow import MlflowClient

    result, _ = published_sweep
    parent = result.tracking
    client = MlflowClient(tracking_uri=parent.uri)
    children = client.search_runs([client.get_experiment_by_name(parent.experiment).experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    states = {run.info.run_name.rsplit("-", 1)[1]: run.info.status for run in children}
    study = study_of(result)
    trained = {str(t.number) for t in study.trials if t.intermediate_values}  # a cached repeat is not a training
    assert trained <= set(states) and states[str(result.sweep.best_trial)] == "FINISHED"
    assert {states[str(t.number)] for t in study.trials if t.state.name == "PRUNED"} == {"KILLED"}
    assert client.get_run(parent.run_id).data.metrics["test_macro_f1"] == result.evaluation.metrics["macro_f1"]


def test_a_trial_that_cannot_learn_is_pruned_at_its_first_evaluation(published_sweep):
    result, _ = published_sweep
    study = study_of(result)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, [(t.number, t.params, t.state.name) for t in study.trials]
    for t in pruned:
        assert t.params["train.learning_rate"] == BAD
        assert t.user_attrs["pruned_at"]["epoch"] == 1 < result.config.train.epochs  # stopped before its last epoch
        assert list(t.intermediate_values) == [1]  # it never reported epoch 2
    assert result.sweep.pruned == len(pruned)


def test_a_killed_sweep_resumes_with_its_finished_trials_kept(hub_repos, store, alice):
    """A sweep killed while a trial ran leaves that trial RUNNING in the study (asked, never told); the rerun keeps
    the finished trials, runs the killed one again with its parameters, and nothing else."""
    import optuna

    from hubflow.experiments.study import distributions, open_storage, storage_url
    from hubflow.flows.sweep import sweep_flow

    space = {"train.learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 5e-3}}
    raw = recipe(hub_repos, store)
    raw["train"]["epochs"] = 1
    config, sweep = load(raw, {"space": space, "trials": 2, "pruner": "none"})
    first = sweep_flow(config, sweep)
    study = study_of(first)
    kept = {t.number: (t.params, t.value, t.datetime_complete) for t in study.trials}
    assert len(kept) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)

    url = storage_url(None, str(store), first.sweep.study)
    killed = optuna.load_study(study_name=first.sweep.study, storage=open_storage(url)).ask(
        distributions(sweep.params))  # what a sweep killed mid-trial leaves behind

    _, more = load(raw, {"space": space, "trials": 3, "pruner": "none"})
    state = sweep_flow(config, more, return_state=True)
    assert state.is_completed(), state.message
    study = study_of(state.result())
    trials = {t.number: t for t in study.trials}
    for number, (params, value, done) in kept.items():
        assert (trials[number].params, trials[number].value, trials[number].datetime_complete) == (params, value, done)
    assert trials[killed.number].state.name == "FAIL" and trials[killed.number].user_attrs["interrupted"]
    rerun = [t for t in study.trials if t.user_attrs.get("rerun_of") == killed.number]
    assert len(rerun) == 1 and rerun[0].state.name == "COMPLETE" and rerun[0].params == killed.params
    assert trial_runs(state.result().flow_run_id) == [f"trial-{rerun[0].number}"]  # only the killed one's re-run
    assert state.result().sweep.trials == 3


def test_a_space_key_that_is_not_a_recipe_field_fails_before_anything_trains(hub_repos, tmp_path, capsys):
    import yaml

    from hubflow.flows.sweep import sweep_flow
    from hubflow.ops.cli import main

    store = tmp_path / "store"
    raw = recipe(hub_repos, store)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**raw, "sweep": {"space": {"train.learnig_rate": {
        "distribution": "log_uniform", "low": 1e-5, "high": 1e-3}}}}))
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "sweep.space.train.learnig_rate: not a recipe field (train has no 'learnig_rate'" in err

    config, sweep = load(raw, {"space": {"train.learning_rate": {"distribution": "uniform", "low": 0.1, "high": 2}}})
    state = sweep_flow(config, sweep, return_state=True)
    assert state.is_failed() and "train.learning_rate: Input should be less than 1" in state.message
    assert not store.exists()  # no study was opened, nothing pulled or trained


def test_the_sweep_form_is_typed():
    from prefect.utilities.callables import parameter_schema

    from hubflow.flows.sweep import sweep_flow

    schema = parameter_schema(sweep_flow).model_dump()
    sweep = schema["definitions"]["SweepConfig"]["properties"]
    assert {"space", "metric", "direction", "trials", "parallelism", "pruner", "storage", "seed"} <= set(sweep)
    param = schema["definitions"]["Param"]["properties"]
    assert schema["definitions"]["Distribution"]["enum"] == ["choice", "uniform", "log_uniform", "int"]
    assert {"low", "high", "step", "choices"} <= set(param)
    assert schema["definitions"]["Pruner"]["enum"] == ["median", "successive_halving", "none"]


@pytest.mark.slow
def test_a_sweep_runs_its_trials_on_both_gpu_workers(hub_repos, localhub, tmp_path):
    """`hubflow sweep` in pools mode against a Prefect server with two gpu process workers (bench/sweep.py's
    topology): trials run side by side on both, the pruner reports from the workers, the best trial is released."""
    import json

    import yaml
    from prefect.settings import PREFECT_API_URL

    from bench.sweep import gpu_pool, hubflow

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "HF_TOKEN": localhub.token("alice")}
    raw = recipe(hub_repos, tmp_path / "store")
    raw.update(execution={"mode": "pools", "timeout_seconds": 900}, sweep={
        "space": {"train.learning_rate": {"distribution": "choice", "choices": [GOOD, BAD]}},
        "trials": 4, "pruner": "median", "startup_trials": 1, "seed": 3})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    with gpu_pool(tmp_path, env) as pool_env:
        seconds, result = hubflow(pool_env, "sweep", [], recipe=path)
    logs = {k: (tmp_path / f"gpu-{k}" / "worker.log").read_text(errors="replace") for k in (1, 2)}
    ran = {k: log.count("hubflow-train") for k, log in logs.items()}
    assert all(ran.values()), json.dumps({k: v[-3000:] for k, v in logs.items()})
    study = study_of(result)
    assert result.sweep.trials == 4
    assert result.checkpoint.fingerprint == study.best_trial.user_attrs["checkpoint"]["fingerprint"]
    # The pruner ran on the workers: every trial that trained there reported each epoch to the study (a repeat of
    # a finished trial's values is the train stage's cache hit: no training, nothing to report).
    trained = [t for t in study.trials if t.intermediate_values]
    assert study.trials[0] in trained, [(t.number, t.state.name, t.intermediate_values) for t in study.trials]
    for t in trained:
        assert list(t.intermediate_values) == ([1] if t.state.name == "PRUNED" else [1, 2])


@pytest.mark.parametrize("changes, sweep, said", [
    ({}, {"space": {"publish.enabled": {"distribution": "choice", "choices": [True]}}},
     "sweep.space.publish.enabled: not a searchable recipe field"),
    ({}, {"space": {"train.lora": {"distribution": "choice", "choices": ["none"]}}},
     "sweep.space.train.lora: not a recipe field (train has no 'lora'"),  # the causal LM's key, not a classifier's
    ({}, {"space": {"train.epochs": {"distribution": "int", "low": 1, "high": 3}}, "parallelism": 2},
     "sweep.parallelism=2 needs execution.mode=pools"),
    ({}, {"space": {"train.epochs": {"distribution": "int", "low": 1, "high": 3}}, "metric": "perplexity"},
     "sweep.metric='perplexity' is not a text-classification metric"),
    ({"artifact_store": "s3://bucket/store"}, {"space": {"train.epochs": {"distribution": "int", "low": 1, "high": 3}}},
     "sweep.storage: a s3:// artifact store needs a study storage every worker reaches"),
], ids=["not searchable", "another kind's key", "parallel in local mode", "another kind's metric", "s3 store"])
def test_a_sweep_that_cannot_run_is_refused_in_one_line(changes, sweep, said):
    from hubflow.experiments.space import SweepError, check_sweep

    raw = {"model": {"repo_id": "org/base"}, "data": {"source": "org/data"}, **changes}
    config, spec = load(raw, sweep)
    with pytest.raises(SweepError) as err:
        check_sweep(config, spec)
    assert str(err.value).startswith(said) and "\n" not in str(err.value)


def test_the_last_evaluation_is_never_pruned(tmp_path):
    """Stopping a trial at its last evaluation saves nothing and throws its finished model away: the pruner is
    asked at every evaluation but the last (here a study with one finished trial at 0.9 sets the median)."""
    import optuna

    from hubflow.experiments.pruning import PruningObserver
    from hubflow.experiments.study import make_pruner, open_storage
    from hubflow.refs import TrialTarget
    from hubflow.stages.observers import StopTrial

    url = f"journal://{tmp_path / 'study.journal'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s", direction="maximize",
                                pruner=make_pruner("median", 1, 0))
    done = study.ask()
    done.report(0.9, 1)
    done.report(0.9, 2)
    study.tell(done, 0.9)

    def observer(epochs: int) -> PruningObserver:
        trial = study.ask()
        obs = PruningObserver(TrialTarget(storage=url, study="s", trial=trial.number, trial_id=trial._trial_id,
                                          metric="eval_macro_f1", direction="higher", startup_trials=1), StopTrial)
        obs.on_start({"total_steps": 5 * epochs, "steps_per_epoch": 5})
        return obs

    observer(epochs=1).on_evaluate(5, 1.0, {"eval_macro_f1": 0.1})  # its only epoch: reported, not stopped
    with pytest.raises(StopTrial, match="pruned by the median pruner after epoch 1"):
        observer(epochs=2).on_evaluate(5, 1.0, {"eval_macro_f1": 0.1})
