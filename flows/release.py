"""The release, shared by every flow that publishes: gate -> model + card -> predictions -> Space.

    from hubflow.flows.release import release
    release(result, result.config.publish, result.config.space)     # inside a flow, as its own tasks

A model that the gate does not promote is not published; the predictions follow the model they were made with;
the Space follows the published model (and rolls back itself when the new version does not serve). What happened
is added to the run's summary in the store.

It is a sequence of tasks run inside the calling flow (the pipeline, or the standalone publish flow), not a subflow:
its artifacts and logs belong to that flow's run, where people look for them, and it costs no extra flow run.
"""

from __future__ import annotations

from hubflow.config import PublishConfig, SpaceConfig
from hubflow.refs import PipelineResult, PublishOutcome
from hubflow.tasks.records import record_release
from hubflow.tasks.release import deploy_space, gate, publish_model, publish_predictions, space_inputs


def release(result: PipelineResult, publish: PublishConfig, space: SpaceConfig) -> PipelineResult:
    """Publish the run's model, then its predictions, then its Space, if the gate promotes it."""
    decision = gate(result, publish)
    if not decision.promoted:
        print(f"not published: {decision.reason}")
        return record_release(result, PublishOutcome(decision=decision))
    model = publish_model(result, publish, decision)
    predictions = publish_predictions(result, model, publish)
    outcome = PublishOutcome(decision=decision, model=model, predictions=predictions)
    print(f"model {model.repo_id}@{model.sha[:10]}, predictions {predictions.repo_id}@{predictions.sha[:10]}")
    if not space.enabled:
        return record_release(result, outcome)
    return record_release(result, outcome, deploy_space(model, space, *space_inputs(result, model, space)))
