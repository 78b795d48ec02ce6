"""Run a GPU stage here or on the gpu work pool: the pipeline's one seam between the two execution modes.

`local` calls the stage's task in this flow run. `pools` starts a run of the stage's deployment with
`run_deployment` (a subflow in the UI), waits for it, propagates failure and cancellation, and reads its
persisted result: refs only cross the wire, and the child's result storage must be shared (s3://).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from hubflow.config import ExecutionConfig, ExecutionMode, InferenceConfig, TrainConfig
from hubflow.refs import CheckpointRef, PinnedRepo, PredictionsRef, TokenizedRef
from hubflow.tasks import pipeline as stages

R = TypeVar("R", bound=BaseModel)


class DispatchError(RuntimeError):
    """A dispatched stage run failed, crashed, was cancelled or timed out."""


def train(tokenized: TokenizedRef, base_model: PinnedRepo, cfg: TrainConfig, artifact_store: str,
          execution: ExecutionConfig, allow_pickle: bool = False) -> CheckpointRef:
    if execution.mode is ExecutionMode.local:
        return stages.train(tokenized, base_model, cfg, artifact_store, allow_pickle)
    params = {"tokenized": tokenized, "base_model": base_model, "train": cfg, "artifact_store": artifact_store,
              "allow_pickle": allow_pickle}
    return _run(execution.train_deployment, params, CheckpointRef, execution.timeout_seconds)


def predict(checkpoint: CheckpointRef, tokenized: TokenizedRef, split: str, cfg: InferenceConfig,
            artifact_store: str, execution: ExecutionConfig) -> PredictionsRef:
    if execution.mode is ExecutionMode.local:
        return stages.predict(checkpoint, tokenized, split, cfg, artifact_store)
    params = {"checkpoint": checkpoint, "tokenized": tokenized, "split": split, "inference": cfg,
              "artifact_store": artifact_store}
    return _run(execution.predict_deployment, params, PredictionsRef, execution.timeout_seconds)


def _run(deployment: str, parameters: dict[str, Any], result_type: type[R], timeout: int) -> R:
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters={k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in parameters.items()},
        timeout=timeout,
        poll_interval=2,
    )
    state = run.state
    if state is None or not state.is_completed():
        name = state.name if state else "no state"
        raise DispatchError(f"{deployment} run {run.name} ({run.id}) ended {name}: {state.message if state else ''}")
    result = state.result()
    return result if isinstance(result, result_type) else result_type.model_validate(result)
