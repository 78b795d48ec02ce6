"""Deploy the demo Space of an existing model repo: pin → labels and examples → batch reference → deploy.

    python -c "from flows.deploy_space import deploy_model_space; deploy_model_space('alice/my-model')"

The pipeline flow calls the same tasks (tasks/space.py) right after publishing, with its own batch predictions as
the reference. `space.enabled` is the pipeline's switch; calling this flow is the decision to deploy.
"""

from __future__ import annotations

from prefect import flow

from tasks import space as space_tasks
from tasks.config import SpaceConfig
from tasks.refs import SpaceDeployment


@flow(name="hubflow-deploy-space", log_prints=True)
def deploy_model_space(
    model_repo_id: str, revision: str = "main", space: SpaceConfig = SpaceConfig(enabled=True), max_length: int = 128
) -> SpaceDeployment:
    """Serve `model_repo_id@revision` (pinned to a sha) in a gradio Space that answers like batch inference."""
    model = space_tasks.pin_model(model_repo_id, revision)
    label_names, examples = space_tasks.describe_model_task(model)
    expected = space_tasks.reference_predictions(model, examples, max_length)
    return space_tasks.deploy_space(model, space, label_names, examples, max_length, expected)
