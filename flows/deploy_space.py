"""Deploy the demo Space (and, when asked, the endpoint) of an existing model repo: pin -> its facts and examples ->
batch reference -> deploy.

    python -c "from hubflow.flows.deploy_space import deploy_model_space; deploy_model_space('alice/my-model')"
    deploy_model_space('alice/my-model', endpoint=EndpointConfig(enabled=True))   # + its HTTP API (an API Space)

The release (flows/release.py) calls the same deploy tasks right after publishing, with the run's own batch
predictions as the reference. `space.enabled` is the pipeline's switch; calling this flow is the decision to deploy
the Space (unless given `space.enabled=false`), and `endpoint.enabled` adds the API, smoke-tested against the same
reference answers. The model's tokens per input and labels come from its facts (`hubflow.json`), as batch inference
reads them.
"""

from __future__ import annotations

from prefect import flow

from hubflow.config import EndpointConfig, SpaceConfig
from hubflow.refs import SpaceDeployment
from hubflow.tasks.release import deploy_endpoint, deploy_space, describe_model, pin_model, reference_predictions


@flow(name="hubflow-deploy-space", log_prints=True)
def deploy_model_space(model_repo_id: str, revision: str = "main", space: SpaceConfig = SpaceConfig(enabled=True),
                       endpoint: EndpointConfig = EndpointConfig()) -> SpaceDeployment | None:
    """Serve `model_repo_id@revision` (pinned to a sha) in a gradio Space that answers like batch inference, and
    over HTTP when `endpoint.enabled`; -> the Space's deployment (the endpoint's when only it is deployed)."""
    model = pin_model(model_repo_id, revision)
    facts, examples = describe_model(model)
    expected, software = reference_predictions(model, facts, examples, space)
    # The endpoint comes up beside the Space (both start a server and load the model); its failure fails the run too.
    api = deploy_endpoint.submit(model, endpoint, facts, expected, software, space=space) if endpoint.enabled else None
    demo = deploy_space(model, space, facts, examples, expected, software) if space.enabled else None
    served = api.result() if api else None
    return demo or served
