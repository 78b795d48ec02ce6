"""Deploy a gradio Space serving a published model; roll it back when the new version does not come up.

PublishedRepo (model at a sha) + its facts + SpaceConfig -> SpaceDeployment. Side effects, in order: create the Space;
set its hardware and sleep time; set its variables (MODEL_ID, MODEL_REVISION, MAX_LENGTH, EXAMPLES) and, for a
private model, the HF_TOKEN *secret* (through the secrets API only: never in a file or a variable); one commit of the
app files (the task kind's space_app/, its requirements pinned to the versions that made the reference answers, +
`hubflow.json`, the deployment record); wait for RUNNING; smoke-test the live
app with gradio_client against the batch predictions. A Space that reached RUNNING and passed gets the git tag
`hubflow-last-good`. On BUILD_ERROR / RUNTIME_ERROR / timeout / a wrong answer: fetch the Space's logs, restore the
files and variables of `hubflow-last-good` in a new commit, wait for RUNNING, and raise `SpaceDeployError` with the
app's own error text. The Prefect task `deploy_space` (tasks/release.py) adds the report and logs as artifacts.
"""

from __future__ import annotations

import json
import time
from string import Template
from typing import Callable

from ..config import SpaceConfig, for_kind
from ..doors import hub
from ..kinds import kind_for
from ..refs import ModelFacts, PinnedRepo, PublishedRepo, SpaceDeployment
from ..software import pin
from .facts import read_facts

MANIFEST = "hubflow.json"  # the deployment record: model, revision, variables (never a secret)
LAST_GOOD_TAG = "hubflow-last-good"
TOKEN_SECRET = "HF_TOKEN"
SPACE_TOKEN_ENV = "HUBFLOW_SPACE_TOKEN"  # a fine-grained read token for Spaces on hubs that mint none
GENERIC_EXAMPLES = ["I really enjoyed this, it was great.", "This was a complete waste of time.",
                    "It arrived on Tuesday."]


class SpaceDeployError(RuntimeError):
    """The new Space version did not serve; `logs` holds its build and run logs (already free of the token)."""

    def __init__(self, message: str, logs: str = ""):
        super().__init__(message)
        self.logs = logs


def default_space_id(model_repo_id: str, cfg: SpaceConfig) -> str:
    return cfg.space_id or f"{model_repo_id}-demo"


def space_variables(model: PublishedRepo, examples: list[str], facts: ModelFacts,
                    cfg: SpaceConfig | None = None, dataset: PublishedRepo | None = None) -> dict[str, str]:
    """What the app reads from its environment (the kind's space_app/app.py): the model at its sha, examples, the
    predictions dataset published with it at its sha when there is one (a search demo searches it), and the kind's
    own settings (a classifier's MAX_LENGTH; a chat model's MAX_NEW_TOKENS, CHAT, adapter base)."""
    kind_settings = kind_for(facts.task).space_variables(facts, for_kind(cfg or SpaceConfig(), facts.task))
    published = {"DATASET_ID": dataset.repo_id, "DATASET_REVISION": dataset.sha} if dataset else {}
    return {"MODEL_ID": model.repo_id, "MODEL_REVISION": model.sha, **published, **kind_settings,
            "EXAMPLES": json.dumps(examples[:10])}


def app_files(model: PublishedRepo, space_id: str, facts: ModelFacts, variables: dict[str, str],
              software: dict[str, str]) -> dict[str, bytes]:
    """The Space's files: the template app, its requirements pinned to `software` (the versions that made the
    answers the app is smoke-tested against), the rendered README (gradio's sdk_version, also from `software`), and
    the deployment record."""
    kind = kind_for(facts.task)
    files = {"app.py": (kind.space_app / "app.py").read_bytes(),
             "requirements.txt": pin((kind.space_app / "requirements.txt").read_text(), software).encode()}
    name = model.repo_id.split("/")[-1]
    files["README.md"] = Template((kind.space_app / "README.md").read_text()).substitute(
        sdk_version=pin("gradio", software).split("==")[1].strip(), title=f"{name} demo", model_id=model.repo_id,
        model_url=model.url, revision=model.sha[:10], short_description=f"{kind.title} with {name}"[:60],
        space_id=space_id, **kind.space_readme(facts, variables),
    ).encode()
    record = {"deployed_by": "hubflow", "model": model.repo_id, "revision": model.sha,
              "facts": facts.model_dump(mode="json"), "variables": variables, "software": software}
    files[MANIFEST] = (json.dumps(record, indent=2) + "\n").encode()
    return files


def deploy(
    model: PublishedRepo, cfg: SpaceConfig, facts: ModelFacts, examples: list[str],
    expected: list[tuple[str, str]] | None, software: dict[str, str], dataset: PublishedRepo | None = None,
) -> SpaceDeployment:
    """Create or update the Space, wait for RUNNING and smoke-test it; on failure roll back and raise.

    `software`: the library versions that made `expected` (the run's predictions manifest, or this process when the
    reference is computed here); the Space's requirements and sdk_version are pinned to them."""
    token = hub.hf_token()
    space_id = default_space_id(model.repo_id, cfg)
    variables = space_variables(model, examples, facts, cfg, dataset)
    files = app_files(model, space_id, facts, variables, software)
    serving = already_serving(space_id, files, cfg)
    if serving is not None:  # a rerun with nothing changed: no restart, no smoke test, no new commit, no waiting
        sha, stage, host = serving
        return SpaceDeployment(space_id=space_id, sha=sha, stage=stage, url=host, model=model)
    hub.ensure_repo(space_id, "space", cfg.private, space_sdk="gradio")
    hub.set_space_hardware(space_id, cfg.hardware, cfg.sleep_time_seconds)
    hub.set_space_variables(space_id, variables)
    if hub.is_private(model.repo_id, "model"):
        give_read_access(space_id, model.repo_id.split("/")[0])
    sha, host = roll_out(space_id, files, f"Serve {model.repo_id}@{model.sha[:10]}", cfg.timeout_seconds, (token,),
                         lambda host: _smoke_test(host, expected or [(examples[0] if examples else "hello", None)],
                                                  facts, token if cfg.private else None))
    return SpaceDeployment(space_id=space_id, sha=sha, stage="RUNNING", url=host, model=model)


def roll_out(space_id: str, files: dict[str, bytes], message: str, timeout: float, secrets: tuple[str | None, ...],
             smoke_test: Callable[[str], None]) -> tuple[str, str]:
    """One commit of `files`, wait for RUNNING, `smoke_test(host)` -> (sha, host), the commit tagged last good.
    Shared by every Space hubflow deploys (the gradio demo, the API endpoint). On a SpaceDeployError from either:
    fetch the Space's logs, roll back, raise SpaceDeployError with the logs; `secrets` are redacted from both."""
    sha = hub.commit_exactly(space_id, "space", files, message)
    try:
        host = wait_running(space_id, sha, timeout)
        smoke_test(host)
    except SpaceDeployError as err:
        logs = _redact(_logs(space_id), *secrets)
        restored = roll_back(space_id, sha, timeout)
        raise SpaceDeployError(f"Space {space_id} at {sha[:10]}: {_redact(str(err), *secrets)}; {restored}",
                               logs) from None
    hub.tag(space_id, "space", LAST_GOOD_TAG, sha, "RUNNING, smoke-tested", move=True)
    return sha, host


def give_read_access(space_id: str, namespace: str) -> None:
    """Least privilege: the Space reads the private model with a read-only token, never the publisher's.

    A hub that mints one per Space (localhub) needs nothing from us: an HF_TOKEN secret would take precedence, so
    one an earlier deploy stored is removed. Elsewhere (huggingface.co) the operator provides a fine-grained read
    token in $HUBFLOW_SPACE_TOKEN (or the Prefect Secret block named by $HUBFLOW_SPACE_TOKEN_BLOCK)."""
    from ..secrets import secret

    if hub.space_token_minted(space_id, namespace):
        if TOKEN_SECRET in hub.space_secret_names(space_id):
            hub.delete_space_secret(space_id, TOKEN_SECRET)
        return
    read_token = secret((SPACE_TOKEN_ENV,), f"{SPACE_TOKEN_ENV}_BLOCK")
    if not read_token:
        raise SpaceDeployError(f"the model is private and this hub gives Spaces no token of their own: set "
                               f"{SPACE_TOKEN_ENV} to a fine-grained read token for {namespace!r}'s repos (hubflow "
                               "never gives a Space the publisher's token)")
    hub.set_space_secret(space_id, TOKEN_SECRET, read_token, "reads the private model (a read token, set by hubflow)")


# The Hub is bringing the Space up by itself (after a restart of the hub, say): nothing for a deploy to do.
COMING_UP = ("BUILDING", "APP_STARTING", "RUNNING_BUILDING", "RUNNING_APP_STARTING")


def already_serving(space_id: str, files: dict[str, bytes], cfg: SpaceConfig) -> tuple[str, str, str | None] | None:
    """(sha, stage, host) when the Space already serves, or is coming up with, exactly these files at its last good
    commit (smoke-tested when it was tagged), with the hardware and sleep time asked for; None when anything must
    change (or the Space does not exist yet). A Space still starting is not waited for: it was not restarted."""
    head = hub.head(space_id, "space")
    if head is None or hub.tags(space_id, "space").get(LAST_GOOD_TAG) != head:
        return None
    runtime = hub.space_runtime(space_id)
    if runtime["stage"] not in ("RUNNING", *COMING_UP) or runtime["sha"] not in (None, head):
        return None
    if (cfg.hardware and cfg.hardware != runtime["hardware"]) or (
            cfg.sleep_time_seconds and cfg.sleep_time_seconds != runtime["sleep_time"]):
        return None
    if set(hub.list_files(space_id, "space", head)) - {".gitattributes"} != set(files):
        return None
    for path, data in files.items():  # a few small files: the app, its requirements, README, the record
        held = hub.download(space_id, path, "space", head)
        if held is None or held.read_bytes() != data:
            return None
    if runtime["stage"] != "RUNNING":
        return head, getattr(runtime["stage"], "value", str(runtime["stage"])), None  # the client's SpaceStage enum
    host = hub.space_host(space_id)
    return (head, "RUNNING", host) if host else None


def roll_back(space_id: str, failed_sha: str, timeout: float) -> str:
    """Commit the files (and set the variables) of `hubflow-last-good` again and wait for RUNNING; says what it did."""
    good = hub.tags(space_id, "space").get(LAST_GOOD_TAG)
    if good is None:
        return "no earlier version reached RUNNING, so there is nothing to roll back to"
    files = {path: hub.download(space_id, path, "space", good).read_bytes()
             for path in hub.list_files(space_id, "space", good) if path != ".gitattributes"}
    if MANIFEST in files:
        hub.set_space_variables(space_id, json.loads(files[MANIFEST])["variables"])
    sha = hub.commit_exactly(space_id, "space", files, f"Roll back to {good[:10]} (hubflow)")
    if sha == failed_sha:  # the good files were already there (it failed for another reason): start them anew
        hub.restart_space(space_id)
    try:
        wait_running(space_id, sha, timeout)
    except SpaceDeployError as err:
        return f"the rollback to {good[:10]} did not come up either ({err})"
    hub.tag(space_id, "space", LAST_GOOD_TAG, sha, "RUNNING, smoke-tested", move=True)
    return f"rolled back to the files of {good[:10]} (commit {sha[:10]}), RUNNING again"


def wait_running(space_id: str, sha: str, timeout: float) -> str:
    """Poll until the Space runs `sha`; returns the app's URL, or raises with the Space's error message."""
    deadline, woken = time.monotonic() + timeout, False
    while True:
        runtime = hub.space_runtime(space_id)
        stage, stale = runtime["stage"], runtime["sha"] not in (None, sha)  # the Hub may report the old version
        if stage in ("PAUSED", "STOPPED", "SLEEPING") and not woken:
            hub.restart_space(space_id)  # a commit does not start a paused Space; deploying means "serve it"
            woken = True
        elif stage == "RUNNING" and not stale:
            host = hub.space_host(space_id)
            if host:
                return host
        elif stage in ("BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "NO_APP_FILE") and not stale:
            raise SpaceDeployError(f"{stage}: {runtime['error'] or 'no error message'}")
        if time.monotonic() > deadline:
            raise SpaceDeployError(f"still {stage} after {timeout:g} s (space.timeout_seconds)")
        time.sleep(2)


def _smoke_test(host: str, expected: list[tuple[str, str | None]], facts: ModelFacts, token: str | None) -> None:
    """Ask the live app through its API: each text must get the batch answer (or, without one, a valid answer)."""
    from gradio_client import Client

    kind = kind_for(facts.task)
    try:
        client = Client(host, token=token, verbose=False, analytics_enabled=False, download_files=False)
        answers = [(text, want, kind.ask_space(client, text)) for text, want in expected]
    except Exception as err:  # noqa: BLE001 - any client failure means the app does not serve
        raise SpaceDeployError(f"the app is RUNNING but its /predict API failed: {type(err).__name__}: {err}") from None
    wrong = [(t, w, got) for t, w, got in answers if not kind.answers_match(got, w, facts)]
    if wrong:
        text, want, got = wrong[0]
        raise SpaceDeployError(f"smoke test: the app says {got!r} for {text!r}, batch inference says {want!r} "
                               f"({len(wrong)}/{len(answers)} texts differ)")


def _logs(space_id: str, lines: int = 200) -> str:
    return "\n\n".join(f"### {what} logs\n```\n" + "\n".join(hub.space_logs(space_id, build, lines)) + "\n```"
                       for what, build in (("build", True), ("run", False)))


def _redact(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        text = text.replace(secret, "***") if secret else text
    return text


def describe_model(model: PublishedRepo) -> tuple[ModelFacts, list[str]]:
    """The model's facts (its `hubflow.json`) and example texts (the card's `widget`/`examples`) at the pinned sha."""
    pinned = PinnedRepo(repo_id=model.repo_id, repo_type="model", revision=model.sha, sha=model.sha)
    facts = read_facts(hub.model_dir(pinned))
    card = hub.card_data(model.repo_id, model.sha)
    items = card.get("widget") or card.get("examples") or []
    examples = [i.get("text") if isinstance(i, dict) else i for i in items]
    examples = [e for e in examples if isinstance(e, str) and e.strip()]
    return facts, examples or list(GENERIC_EXAMPLES)
