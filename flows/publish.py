"""Publish a finished training run: promotion gate → model + card → predictions dataset.

    from flows.publish import publish_run
    publish_run("./.hubflow/store/runs/<flow run id>/summary.json")            # the run's own publish config
    publish_run(summary_uri, PublishConfig(repo_id="me/my-model", gate={"enabled": True}))

Calling this flow is the request to publish, so `publish.enabled` (which switches publishing on in the pipeline flow)
is not consulted here. The Hub token comes from HF_TOKEN or the Prefect Secret block named by $HUBFLOW_HF_TOKEN_BLOCK.
"""

from __future__ import annotations

from prefect import flow

from tasks.config import PublishConfig
from tasks.gate import gate
from tasks.publish import load_run, publish_model, publish_predictions
from tasks.refs import PublishOutcome


@flow(name="hubflow-publish", persist_result=True, log_prints=True)
def publish_run(summary_uri: str, publish: PublishConfig | None = None) -> PublishOutcome:
    """Gate the run's model against the published champion; if promoted, publish the model, then its predictions."""
    result = load_run(summary_uri)
    publish = publish or result.config.publish
    decision = gate(result, publish)
    if not decision.promoted:
        print(f"not published: {decision.reason}")
        return PublishOutcome(decision=decision)
    model = publish_model(result, publish)
    predictions = publish_predictions(result, model, publish)
    print(f"model {model.repo_id}@{model.sha[:10]}, predictions {predictions.repo_id}@{predictions.sha[:10]}")
    return PublishOutcome(decision=decision, model=model, predictions=predictions)
