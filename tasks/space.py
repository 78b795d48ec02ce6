"""Deploy a gradio Space serving a published classifier; roll it back when the new version does not come up.

PublishedRepo (model at a sha) + SpaceConfig -> SpaceDeployment. Side effects, in order: create the Space; set its
hardware and sleep time; set its variables (MODEL_ID, MODEL_REVISION, MAX_LENGTH, EXAMPLES) and, for a private model,
the HF_TOKEN *secret* (through the secrets API only: never in a file or a variable); one commit of the app files
(tasks/space_app/ + `hubflow.json`, the deployment record); wait for RUNNING; smoke-test the live app with
gradio_client against the batch predictions. A Space that reached RUNNING and passed gets the git tag
`hubflow-last-good`. On BUILD_ERROR / RUNTIME_ERROR / timeout / a wrong answer: fetch the Space's logs, restore the
files and variables of `hubflow-last-good` in a new commit, wait for RUNNING, and raise `SpaceDeployError` with the
app's own error text. The Prefect task `deploy_space` adds the report and the logs as markdown artifacts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from string import Template

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from . import hub
from .config import SpaceConfig
from .refs import PipelineResult, PublishedRepo, SpaceDeployment
from .stages import NETWORK_RETRIES

APP_DIR = Path(__file__).parent / "space_app"
APP_FILES = ("app.py", "requirements.txt")
MANIFEST = "hubflow.json"  # the deployment record: model, revision, variables (never a secret)
LAST_GOOD_TAG = "hubflow-last-good"
TOKEN_SECRET = "HF_TOKEN"
GENERIC_EXAMPLES = ["I really enjoyed this, it was great.", "This was a complete waste of time.", "It arrived on Tuesday."]


class SpaceDeployError(RuntimeError):
    """The new Space version did not serve; `logs` holds its build and run logs (already free of the token)."""

    def __init__(self, message: str, logs: str = ""):
        super().__init__(message)
        self.logs = logs


def default_space_id(model_repo_id: str, cfg: SpaceConfig) -> str:
    return cfg.space_id or f"{model_repo_id}-demo"


def space_variables(model: PublishedRepo, examples: list[str], max_length: int) -> dict[str, str]:
    """What the app reads from its environment (tasks/space_app/app.py)."""
    return {"MODEL_ID": model.repo_id, "MODEL_REVISION": model.sha, "MAX_LENGTH": str(max_length),
            "EXAMPLES": json.dumps(examples[:10])}


def app_files(model: PublishedRepo, space_id: str, label_names: list[str], variables: dict[str, str]) -> dict[str, bytes]:
    """The Space's files: the template app, its pinned requirements, the rendered README, the deployment record."""
    files = {name: (APP_DIR / name).read_bytes() for name in APP_FILES}
    name = model.repo_id.split("/")[-1]
    files["README.md"] = Template((APP_DIR / "README.md").read_text()).substitute(
        title=f"{name} demo", model_id=model.repo_id, model_url=model.url, revision=model.sha[:10],
        short_description=f"Text classification with {name}"[:60], labels=", ".join(label_names),
        max_length=variables["MAX_LENGTH"], space_id=space_id,
    ).encode()
    record = {"deployed_by": "hubflow", "model": model.repo_id, "revision": model.sha, "labels": label_names,
              "variables": variables}
    files[MANIFEST] = (json.dumps(record, indent=2) + "\n").encode()
    return files


def deploy(
    model: PublishedRepo, cfg: SpaceConfig, label_names: list[str], examples: list[str], max_length: int,
    expected: list[tuple[str, str]] | None = None,
) -> SpaceDeployment:
    """Create or update the Space, wait for RUNNING and smoke-test it; on failure roll back and raise."""
    api, token = hub.api(), hub.hf_token()
    space_id = default_space_id(model.repo_id, cfg)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=cfg.private, exist_ok=True)
    _set_hardware(api, space_id, cfg)
    variables = space_variables(model, examples, max_length)
    _set_variables(api, space_id, variables)
    if api.model_info(model.repo_id).private:  # a property of the repo, not of a revision
        if not token:
            raise SpaceDeployError(f"{model.repo_id} is private, but there is no token to give the Space")
        api.add_space_secret(space_id, TOKEN_SECRET, token, description="reads the private model (set by hubflow)")
    sha = _commit(api, space_id, app_files(model, space_id, label_names, variables),
                  f"Serve {model.repo_id}@{model.sha[:10]}")
    try:
        host = _wait_running(api, space_id, sha, cfg.timeout_seconds)
        _smoke_test(host, expected or [(examples[0] if examples else "hello", None)], label_names,
                    token if cfg.private else None)
    except SpaceDeployError as err:
        logs = _redact(_logs(api, space_id), token)
        restored = roll_back(api, space_id, sha, cfg.timeout_seconds)
        raise SpaceDeployError(f"Space {space_id} at {sha[:10]}: {_redact(str(err), token)}; {restored}", logs) from None
    _tag_last_good(api, space_id, sha)
    return SpaceDeployment(space_id=space_id, sha=sha, stage="RUNNING", url=host, model=model)


def roll_back(api: HfApi, space_id: str, failed_sha: str, timeout: float) -> str:
    """Commit the files (and set the variables) of `hubflow-last-good` again and wait for RUNNING; says what it did."""
    good = next((t.target_commit for t in api.list_repo_refs(space_id, repo_type="space").tags
                 if t.name == LAST_GOOD_TAG), None)
    if good is None:
        return "no earlier version reached RUNNING, so there is nothing to roll back to"
    files = {}
    for path in api.list_repo_files(space_id, repo_type="space", revision=good):
        if path != ".gitattributes":
            local = api.hf_hub_download(space_id, path, repo_type="space", revision=good)
            files[path] = Path(local).read_bytes()
    if MANIFEST in files:
        _set_variables(api, space_id, json.loads(files[MANIFEST])["variables"])
    sha = _commit(api, space_id, files, f"Roll back to {good[:10]} (hubflow)")
    if sha == failed_sha:  # the good files were already there (it failed for another reason): start them anew
        api.restart_space(space_id)
    try:
        _wait_running(api, space_id, sha, timeout)
    except SpaceDeployError as err:
        return f"the rollback to {good[:10]} did not come up either ({err})"
    _tag_last_good(api, space_id, sha)
    return f"rolled back to the files of {good[:10]} (commit {sha[:10]}), RUNNING again"


def _set_hardware(api: HfApi, space_id: str, cfg: SpaceConfig) -> None:
    runtime = api.get_space_runtime(space_id)
    if cfg.hardware and cfg.hardware != runtime.requested_hardware:  # a hardware change restarts the Space
        api.request_space_hardware(space_id, cfg.hardware, sleep_time=cfg.sleep_time_seconds)
    elif cfg.sleep_time_seconds and cfg.sleep_time_seconds != runtime.sleep_time:
        api.set_space_sleep_time(space_id, cfg.sleep_time_seconds)


def _set_variables(api: HfApi, space_id: str, variables: dict[str, str]) -> None:
    # Only the changed ones: every variable write restarts the Space.
    current = {k: v.value for k, v in api.get_space_variables(space_id).items()}
    for key, value in variables.items():
        if current.get(key) != value:
            api.add_space_variable(space_id, key, value)


def _commit(api: HfApi, space_id: str, files: dict[str, bytes], message: str) -> str:
    """One commit that makes the Space hold exactly `files` (plus .gitattributes); returns the head sha."""
    stale = set(api.list_repo_files(space_id, repo_type="space")) - set(files) - {".gitattributes"}
    ops = [CommitOperationAdd(path, data) for path, data in files.items()]
    ops += [CommitOperationDelete(path) for path in sorted(stale)]
    return api.create_commit(space_id, ops, commit_message=message, repo_type="space").oid


def _wait_running(api: HfApi, space_id: str, sha: str, timeout: float) -> str:
    """Poll until the Space runs `sha`; returns the app's URL, or raises with the Space's error message."""
    deadline, woken = time.monotonic() + timeout, False
    while True:
        runtime = api.get_space_runtime(space_id)
        stale = runtime.raw.get("sha") not in (None, sha)  # the Hub may report the old version for a moment
        if runtime.stage in ("PAUSED", "STOPPED", "SLEEPING") and not woken:
            api.restart_space(space_id)  # a commit does not start a paused Space; deploying means "serve it"
            woken = True
        elif runtime.stage == "RUNNING" and not stale:
            host = api.space_info(space_id).host
            if host:
                return host
        elif runtime.stage in ("BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "NO_APP_FILE") and not stale:
            raise SpaceDeployError(f"{runtime.stage}: {runtime.raw.get('errorMessage') or 'no error message'}")
        if time.monotonic() > deadline:
            raise SpaceDeployError(f"still {runtime.stage} after {timeout:g} s (space.timeout_seconds)")
        time.sleep(2)


def _smoke_test(host: str, expected: list[tuple[str, str | None]], label_names: list[str], token: str | None) -> None:
    """Ask the live app through its API: each text must get the batch label (or, without one, a known label)."""
    from gradio_client import Client

    try:
        client = Client(host, token=token, verbose=False, analytics_enabled=False, download_files=False)
        answers = [(text, want, client.predict(text, api_name="/predict")["label"]) for text, want in expected]
    except Exception as err:  # noqa: BLE001 - any client failure means the app does not serve
        raise SpaceDeployError(f"the app is RUNNING but its /predict API failed: {type(err).__name__}: {err}") from None
    wrong = [(t, w, got) for t, w, got in answers if (got != w if w is not None else got not in label_names)]
    if wrong:
        text, want, got = wrong[0]
        raise SpaceDeployError(f"smoke test: the app says {got!r} for {text!r}, batch inference says {want!r} "
                               f"({len(wrong)}/{len(answers)} texts differ)")


def _logs(api: HfApi, space_id: str, lines: int = 200) -> str:
    out = []
    for kind, build in (("build", True), ("run", False)):
        try:
            text = "".join(api.fetch_space_logs(space_id, build=build)).splitlines()[-lines:]
        except HfHubHTTPError as err:
            text = [f"(logs unavailable: {err})"]
        out.append(f"### {kind} logs\n```\n" + "\n".join(text) + "\n```")
    return "\n\n".join(out)


def _tag_last_good(api: HfApi, space_id: str, sha: str) -> None:
    tags = {t.name: t.target_commit for t in api.list_repo_refs(space_id, repo_type="space").tags}
    if tags.get(LAST_GOOD_TAG) == sha:
        return
    if LAST_GOOD_TAG in tags:
        api.delete_tag(space_id, tag=LAST_GOOD_TAG, repo_type="space")
    api.create_tag(space_id, tag=LAST_GOOD_TAG, revision=sha, repo_type="space", tag_message="RUNNING, smoke-tested")


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def describe_model(model: PublishedRepo) -> tuple[list[str], list[str]]:
    """Label names (config.json's id2label) and example texts (the card's `widget`/`examples`) at the pinned sha."""
    api = hub.api()
    config = json.loads(Path(api.hf_hub_download(model.repo_id, "config.json", revision=model.sha)).read_text())
    id2label = config.get("id2label") or {}
    label_names = [id2label[str(i)] for i in range(len(id2label))]
    card = api.model_info(model.repo_id, revision=model.sha).card_data
    items = ((card.get("widget") or card.get("examples")) if card else None) or []
    examples = [i.get("text") if isinstance(i, dict) else i for i in items]
    examples = [e for e in examples if isinstance(e, str) and e.strip()]
    return label_names, examples or list(GENERIC_EXAMPLES)


@task(name="space-inputs")
def space_inputs(result: PipelineResult, n: int = 3) -> tuple[list[str], list[str], int, list[tuple[str, str]]]:
    """From a training run: label names, example texts, max_length, and (text, batch label) pairs to smoke-test."""
    from .infer import read_predictions

    rows = read_predictions(result.predictions).slice(0, n).to_pylist()
    texts = [r["text"] for r in rows]
    return (result.checkpoint.label_names, texts, result.config.preprocess.max_length,
            [(r["text"], r["pred_label"]) for r in rows])


@task(name="pin-model", **NETWORK_RETRIES)
def pin_model(repo_id: str, revision: str) -> PublishedRepo:
    """An existing model repo at the sha `revision` resolves to now."""
    pinned = hub.pin(repo_id, "model", revision, "model")
    return PublishedRepo(repo_id=repo_id, repo_type="model", sha=pinned.sha, url=f"{hub.endpoint()}/{repo_id}",
                         created=False)


@task(name="describe-model", **NETWORK_RETRIES)
def describe_model_task(model: PublishedRepo) -> tuple[list[str], list[str]]:
    """Label names and example texts of the model at its sha."""
    return describe_model(model)


@task(name="reference-predictions", **NETWORK_RETRIES)
def reference_predictions(model: PublishedRepo, texts: list[str], max_length: int) -> list[tuple[str, str]]:
    """(text, label) as batch inference labels them: what the live app must answer."""
    from .infer import predict_texts
    from .refs import PinnedRepo

    local = hub.model_dir(PinnedRepo(repo_id=model.repo_id, repo_type="model", revision=model.sha, sha=model.sha))
    return [(t, p["label"]) for t, p in zip(texts, predict_texts(local, texts, max_length=max_length))]


@task(name="deploy-space", **NETWORK_RETRIES)
def deploy_space(
    model: PublishedRepo, cfg: SpaceConfig, label_names: list[str], examples: list[str], max_length: int,
    expected: list[tuple[str, str]] | None = None,
) -> SpaceDeployment:
    """Deploy the model's demo Space (see `deploy`); the outcome and, on failure, the Space's logs become artifacts."""
    try:
        result = deploy(model, cfg, label_names, examples, max_length, expected)
    except SpaceDeployError as err:
        create_markdown_artifact(key="space-deploy-failure", description=f"Space deploy of {model.repo_id} failed",
                                 markdown=f"## Space deploy failed\n\n{err}\n\n{err.logs}")
        raise
    page = f"{hub.endpoint()}/spaces/{result.space_id}"
    create_markdown_artifact(key="space-deployment", description=f"Demo Space of {model.repo_id}", markdown=(
        "| Space | app | stage | commit | model |\n|---|---|---|---|---|\n"
        f"| [{result.space_id}]({page}) | {result.url} | {result.stage} | `{result.sha[:10]}` | "
        f"{model.repo_id}@`{model.sha[:10]}` |"))
    get_run_logger().info("Space %s RUNNING at %s (commit %s)", result.space_id, result.url, result.sha[:10])
    return result
