"""The release's Prefect tasks: gate -> publish the model -> publish the predictions -> deploy the Space and the API.

Thin doors over hubflow.stages (gate, publish, space): retries at the Hub edge, and a markdown artifact for each
decision or repo, so the UI shows what was released and why. Publishing is never cached: the Hub is the state.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from hubflow import software
from hubflow.config import EndpointConfig, InferencePrecision, PublishConfig, SpaceConfig, check_repo_id
from hubflow.doors import hub
from hubflow.errors import PreflightError
from hubflow.kinds import kind_for
from hubflow.refs import GateDecision, ModelFacts, PinnedRepo, PipelineResult, PublishedRepo, SpaceDeployment
from hubflow.stages import endpoint as endpoint_lib
from hubflow.stages import gate as gate_lib
from hubflow.stages import publish as publish_lib
from hubflow.stages import space as space_lib
from hubflow.tasks.common import NETWORK_RETRIES


@task(name="load-run")
def load_run(summary_uri: str) -> PipelineResult:
    """The stored PipelineResult of a training run."""
    return publish_lib.load_result(summary_uri)


@task(name="check-release-targets", **NETWORK_RETRIES)
def check_release_targets(base_model: str, data_source: str, publish: PublishConfig, space: SpaceConfig,
                          endpoint: EndpointConfig | None = None) -> None:
    """Before any stage that costs: every repo this run will publish to (model, predictions, Space, API Space) has
    an id the Hub accepts and the token can write it, and the endpoint has the token its callers will send, so a run
    never trains for an hour and then fails to publish, or publishes half a release."""
    targets = publish_lib.release_targets(base_model, data_source, publish, space)  # ids the Hub accepts
    if endpoint is not None and endpoint.enabled:
        targets["endpoint.repo_id"] = check_endpoint_target(targets["publish.repo_id"], endpoint)
    hub.check_can_write(targets)
    get_run_logger().info("release targets writable: %s", ", ".join(targets.values()))


def check_endpoint_target(model_repo_id: str, endpoint: EndpointConfig) -> str:
    """The API Space's id (checked as the Hub client would) when the callers' token is there; PreflightError else."""
    if not endpoint_lib.caller_token():
        raise PreflightError(f"endpoint.enabled: the endpoint needs the bearer token its callers will send; set "
                             f"{endpoint_lib.TOKEN_ENV} or ${endpoint_lib.TOKEN_BLOCK_ENV}")
    try:
        return check_repo_id(endpoint_lib.default_repo_id(model_repo_id, endpoint), "endpoint.repo_id")
    except ValueError as e:
        raise PreflightError(str(e)) from None


@task(name="promotion-gate", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def gate(result: PipelineResult, publish: PublishConfig) -> GateDecision:
    """Champion/challenger on the same test set -> GateDecision, with a comparison artifact."""
    decision, champion = gate_lib.judge(result, publish)
    metrics = list(kind_for(result.checkpoint.facts.task).metrics)
    markdown = gate_lib.gate_markdown(decision, result.evaluation.metrics, champion, metrics)
    create_markdown_artifact(key="promotion-gate", markdown=markdown,
                             description="Promotion gate: challenger vs champion")
    return decision


@task(name="publish-model", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def publish_model(result: PipelineResult, publish: PublishConfig,
                  decision: GateDecision | None = None) -> PublishedRepo:
    """Checkpoint + card (with the gate's decision) -> one tagged commit on the model repo (none when unchanged)."""
    published = publish_lib.push_model(result, publish, decision=decision)
    _record(published, "published-model", "Published model")
    return published


@task(name="publish-predictions", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def publish_predictions(result: PipelineResult, model: PublishedRepo, publish: PublishConfig) -> PublishedRepo:
    """Test predictions + card -> one commit on the predictions dataset repo (none when unchanged)."""
    published = publish_lib.push_predictions(result, model, publish)
    _record(published, "published-predictions", "Published predictions")
    return published


def _record(published: PublishedRepo, key: str, description: str) -> None:
    state = "new commit" if published.created else "unchanged (no new commit)"
    if published.pr_url:
        state = f"pull request [#{published.pr_num}]({published.pr_url}), waiting for a merge"
    tag = f"`{published.tag}`" if published.tag else "—"
    create_markdown_artifact(key=key, description=description, markdown="\n".join([
        "| repo | type | commit | tag | status |", "|---|---|---|---|---|",
        f"| [{published.repo_id}]({published.url}/tree/{published.sha}) | {published.repo_type} | "
        f"`{published.sha}` | {tag} | {state} |", ""]))


@task(name="review-summary", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def review_summary(result: PipelineResult, publish: PublishConfig, decision: GateDecision) -> str:
    """What a reviewer approves: the gate's decision and metrics, and the model card's diff against the target's."""
    import difflib

    from hubflow.stages.card import model_card

    repo_id = publish_lib.target_repos(result, publish)[0]
    head = hub.head(repo_id, "model")
    current = hub.download(repo_id, "README.md", "model", head) if head else None
    old = current.read_text().splitlines() if current else []
    new = str(model_card(result, repo_id, publish_lib.run_tag(result), decision=decision)).splitlines()
    diff = "\n".join(difflib.unified_diff(old, new, f"{repo_id}@{(head or 'new')[:10]}", "this run", lineterm="", n=1))
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.evaluation.metrics.items())
    return "\n".join([f"## Publish {repo_id}?", "", f"**Gate**: {decision.reason}", "", f"**Test metrics**: {metrics}",
                      "", "**Model card, as it would change**:", "", "```diff", diff[:20000] or "(no change)", "```"])


@task(name="space-inputs")
def space_inputs(result: PipelineResult, model: PublishedRepo, space: SpaceConfig,
                 n: int = 3) -> tuple[ModelFacts, list[str], list[tuple[str, str]], dict[str, str]]:
    """From a training run: the published folder's facts, example inputs, (input, answer) pairs the live app
    must give (a classifier's batch predictions; a chat model's greedy answers, computed as the app computes them),
    and the library versions that made the batch predictions (the Space is pinned to them)."""
    from hubflow.stages.facts import read_facts
    from hubflow.stages.predict import read_manifest, read_predictions

    local = hub.model_dir(PinnedRepo(repo_id=model.repo_id, repo_type="model", revision=model.sha, sha=model.sha))
    facts = read_facts(local)
    kind = kind_for(facts.task)
    rows = read_predictions(result.predictions).slice(0, n).to_pylist()
    expected = kind.reference_answers(rows, local, facts, space)
    # A manifest from before versions were recorded: its rows were made by this install's kind of environment.
    made_by = read_manifest(result.predictions).get("software") or software.installed()
    return facts, [text for text, _ in expected], expected, made_by


@task(name="pin-model", **NETWORK_RETRIES)
def pin_model(repo_id: str, revision: str) -> PublishedRepo:
    """An existing model repo at the sha `revision` resolves to now."""
    pinned = hub.pin(repo_id, "model", revision, "model")
    return PublishedRepo(repo_id=repo_id, repo_type="model", sha=pinned.sha, url=f"{hub.endpoint()}/{repo_id}",
                         created=False)


@task(name="describe-model", **NETWORK_RETRIES)
def describe_model(model: PublishedRepo) -> tuple[ModelFacts, list[str]]:
    """The model's facts and example texts at its sha."""
    return space_lib.describe_model(model)


@task(name="reference-predictions", **NETWORK_RETRIES)
def reference_predictions(model: PublishedRepo, facts: ModelFacts, texts: list[str],
                          space: SpaceConfig) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(input, answer) as hubflow's own inference answers them: what the live app must answer; and the library
    versions that answered (this process's), which the Space is pinned to."""
    local = hub.model_dir(PinnedRepo(repo_id=model.repo_id, repo_type="model", revision=model.sha, sha=model.sha))
    return list(zip(texts, kind_for(facts.task).answer_texts(local, texts, facts, space))), software.installed()


@task(name="deploy-space", **NETWORK_RETRIES)
def deploy_space(model: PublishedRepo, cfg: SpaceConfig, facts: ModelFacts, examples: list[str],
                 expected: list[tuple[str, str]] | None, software: dict[str, str],
                 dataset: PublishedRepo | None = None) -> SpaceDeployment:
    """Deploy the model's demo Space; the outcome and, on failure, the Space's logs become artifacts."""
    try:
        result = space_lib.deploy(model, cfg, facts, examples, expected, software, dataset)
    except space_lib.SpaceDeployError as err:
        create_markdown_artifact(key="space-deploy-failure", description=f"Space deploy of {model.repo_id} failed",
                                 markdown=f"## Space deploy failed\n\n{err}\n\n{err.logs}")
        raise
    page = f"{hub.endpoint()}/spaces/{result.space_id}"
    create_markdown_artifact(key="space-deployment", description=f"Demo Space of {model.repo_id}", markdown=(
        "| Space | app | stage | commit | model |\n|---|---|---|---|---|\n"
        f"| [{result.space_id}]({page}) | {result.url or '(starting)'} | {result.stage} | `{result.sha[:10]}` | "
        f"{model.repo_id}@`{model.sha[:10]}` |"))
    if result.url:
        get_run_logger().info("Space %s %s at %s (commit %s)",
                              result.space_id, result.stage, result.url, result.sha[:10])
    else:  # unchanged, and the hub is (re)starting it by itself: nothing to wait for
        get_run_logger().info("Space %s %s (commit %s, unchanged: the hub is starting it)", result.space_id,
                              result.stage, result.sha[:10])
    return result


@task(name="deploy-endpoint", **NETWORK_RETRIES)
def deploy_endpoint(model: PublishedRepo, cfg: EndpointConfig, facts: ModelFacts,
                    expected: list[tuple[str, str]] | None, software: dict[str, str],
                    precision: InferencePrecision = InferencePrecision.auto,
                    space: SpaceConfig | None = None) -> SpaceDeployment:
    """Deploy the model's HTTP API (an API Space running hubflow's server), smoke-tested against `expected`: the
    answers made with `precision` (endpoint.precision overrides it) and, for generation, the `space` settings' answer
    length. The outcome, its URL and a call to try, or on failure the Space's logs, become artifacts."""
    precision = InferencePrecision(cfg.precision or precision).value
    answer_tokens = getattr(kind_for(facts.task).own(space or SpaceConfig()), "max_new_tokens", 64)
    try:
        result = endpoint_lib.deploy(model, cfg, facts, expected or [], software, precision, answer_tokens)
    except space_lib.SpaceDeployError as err:
        create_markdown_artifact(key="endpoint-deploy-failure", description=f"Endpoint of {model.repo_id} failed",
                                 markdown=f"## Endpoint deploy failed\n\n{err}\n\n{err.logs}")
        raise
    page = f"{hub.endpoint()}/spaces/{result.space_id}"
    create_markdown_artifact(key="endpoint-deployment", description=f"HTTP API of {model.repo_id}", markdown=(
        "| API Space | base URL | stage | commit | model |\n|---|---|---|---|---|\n"
        f"| [{result.space_id}]({page}) | {result.url or '(starting)'} | {result.stage} | `{result.sha[:10]}` | "
        f"{model.repo_id}@`{model.sha[:10]}` |\n\n"
        f"Call it: `InferenceClient(base_url=\"{result.url}\", token=os.environ[\"{endpoint_lib.TOKEN_ENV}\"])`"))
    get_run_logger().info("endpoint %s %s at %s (commit %s)", result.space_id, result.stage, result.url,
                          result.sha[:10])
    return result
