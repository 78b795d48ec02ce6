"""Deploy the demo Space of an existing model repo: pin -> its facts and examples -> batch reference -> deploy.

    python -c "from hubflow.flows.deploy_space import deploy_model_space; deploy_model_space('alice/my-model')"

The release (flows/release.py) calls the same deploy task right after publishing, with the run's own batch
predictions as the reference. `space.enabled` is the pipeline's switch; calling this flow is the decision to deploy.
The model's tokens per input and labels come from its facts (`hubflow.json`), as batch inference reads them.
"""

from __future__ import annotations

from prefect import flow

from hubflow.config import SpaceConfig
from hubflow.refs import SpaceDeployment
from hubflow.tasks.release import deploy_space, describe_model, pin_model, reference_predictions


@flow(name="hubflow-deploy-space", log_prints=True)
def deploy_model_space(model_repo_id: str, revision: str = "main",
                       space: SpaceConfig = SpaceConfig(enabled=True)) -> SpaceDeployment:
    """Serve `model_repo_id@revision` (pinned to a sha) in a gradio Space that answers like batch inference."""
    model = pin_model(model_repo_id, revision)
    facts, examples = describe_model(model)
    expected, software = reference_predictions(model, facts, examples, space)
    return deploy_space(model, space, facts, examples, expected, software)
