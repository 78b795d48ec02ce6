"""The release, shared by every flow that publishes: gate -> model + card -> predictions -> Space and endpoint.

    from hubflow.flows.release import release
    release(result, result.config.publish, result.config.space)     # inside a flow, as its own tasks

A model that the gate does not promote is not published; the predictions follow the model they were made with;
the demo Space and the endpoint (the HTTP API, an API Space) follow the published model, side by side, each
smoke-tested against the same batch answers (and each rolls back itself when its new version does not serve).
What happened is added to the run's summary in the store.

It is a sequence of tasks run inside the calling flow (the pipeline, or the standalone publish flow), not a subflow:
its artifacts and logs belong to that flow's run, where people look for them, and it costs no extra flow run.
"""

from __future__ import annotations

from prefect.futures import wait
from prefect.input import RunInput
from pydantic import Field

from hubflow.config import EndpointConfig, PublishConfig, ReviewMode, SpaceConfig
from hubflow.refs import PipelineResult, PublishOutcome
from hubflow.tasks.records import record_release
from hubflow.tasks.release import (
    deploy_endpoint,
    deploy_space,
    gate,
    publish_model,
    publish_predictions,
    review_summary,
    space_inputs,
)


class Approval(RunInput):
    """The form a reviewer submits in the Prefect UI (publish.review=approval)."""

    approve: bool = Field(False, description="Publish this model, its predictions and its Space.")
    comment: str = Field("", description="Why (recorded in the run's log).")


class NotApproved(RuntimeError):
    """The reviewer said no, or nobody answered in time: nothing was published."""


def release(result: PipelineResult, publish: PublishConfig, space: SpaceConfig,
            endpoint: EndpointConfig | None = None) -> PipelineResult:
    """Publish the run's model, then its predictions, then its Space and endpoint (default: the run's own
    `endpoint` section), if the gate promotes it."""
    endpoint = endpoint or result.config.endpoint
    decision = gate(result, publish)
    if not decision.promoted:
        print(f"not published: {decision.reason}")
        return record_release(result, PublishOutcome(decision=decision))
    if publish.review is ReviewMode.approval:
        wait_for_approval(review_summary(result, publish, decision), publish.review_timeout_seconds)
    model = publish_model(result, publish, decision)
    predictions = publish_predictions(result, model, publish)
    outcome = PublishOutcome(decision=decision, model=model, predictions=predictions)
    print(f"model {model.repo_id}@{model.sha[:10]}, predictions {predictions.repo_id}@{predictions.sha[:10]}")
    if publish.review is ReviewMode.pr:
        # The Space follows the model once a person merges its pull request (hubflow-deploy-space/on-model-merge).
        print(f"pull requests to merge: {model.pr_url}, {predictions.pr_url}")
        return record_release(result, outcome)
    if not (space.enabled or endpoint.enabled):
        return record_release(result, outcome)
    facts, examples, expected, software = space_inputs(result, model, space)
    # Both are Spaces that start and load the model: deployed at the same time, each waited for.
    demo = (deploy_space.submit(model, space, facts, examples, expected, software, dataset=predictions)
            if space.enabled else None)
    api = (deploy_endpoint.submit(model, endpoint, facts, expected, software, result.config.inference.precision,
                                  space) if endpoint.enabled else None)
    wait([f for f in (demo, api) if f is not None])
    return record_release(result, outcome, demo.result() if demo else None, api.result() if api else None)


def wait_for_approval(summary: str, timeout: int, poll_interval: int = 2) -> None:
    """Pause the flow run with the approval form (the summary as its description); return when approved, raise
    NotApproved when rejected or when nobody answers within `timeout` seconds."""
    from prefect import get_run_logger
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    try:
        answer = pause_flow_run(wait_for_input=Approval.with_initial_data(description=summary, approve=False),
                                timeout=timeout, poll_interval=poll_interval)
    except FlowPauseTimeout:
        raise NotApproved(f"publish.review=approval: nobody approved within {timeout} s; "
                          "nothing was published") from None
    get_run_logger().info("review: %s%s", "approved" if answer.approve else "rejected",
                          f" ({answer.comment})" if answer.comment else "")
    if not answer.approve:
        raise NotApproved(f"publish.review=approval: rejected{': ' + answer.comment if answer.comment else ''}; "
                          "nothing was published")
