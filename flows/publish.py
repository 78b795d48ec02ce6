"""Publish a finished training run: the same release as the pipeline's (gate -> model -> predictions -> Space).

    from hubflow.flows.publish import publish_run
    publish_run("./.hubflow/store/runs/<flow run id>/summary.json")            # the run's own publish config
    publish_run(summary_uri, PublishConfig(repo_id="me/my-model", gate={"mode": "champion"}))

Calling this flow is the request to publish, so `publish.enabled` (which switches publishing on in the pipeline flow)
is not consulted here; the Space is deployed when `space.enabled` (the run's own setting unless given). The Hub token
comes from HF_TOKEN or the Prefect Secret block named by $HUBFLOW_HF_TOKEN_BLOCK.
"""

from __future__ import annotations

from prefect import flow

from hubflow.config import EndpointConfig, PublishConfig, SpaceConfig
from hubflow.flows.release import release
from hubflow.refs import PublishOutcome
from hubflow.tasks.release import check_release_targets, load_run


@flow(name="hubflow-publish", persist_result=True, log_prints=True)
def publish_run(summary_uri: str, publish: PublishConfig | None = None, space: SpaceConfig | None = None,
                endpoint: EndpointConfig | None = None) -> PublishOutcome:
    """Gate the run's model against the published champion; if promoted, publish the model, its predictions,
    Space and endpoint."""
    result = load_run(summary_uri)
    publish, space = publish or result.config.publish, space or result.config.space
    endpoint = endpoint or result.config.endpoint
    check_release_targets(result.base_model.repo_id, result.dataset.repo_id if result.dataset else result.raw.source,
                          publish, space, endpoint)
    released = release(result, publish, space, endpoint)
    return released.published
