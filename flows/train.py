"""Training as a flow of its own, so it can be a deployment on the gpu work pool.

The pipeline dispatches here with `run_deployment` (execution.mode=pools), passing refs only; the result (a
CheckpointRef) is persisted to the shared result storage so the parent can read it from another machine.
"""

from __future__ import annotations

from prefect import flow

from hubflow.config import TrainConfig
from hubflow.refs import CheckpointRef, ObserveSpec, PinnedRepo, TokenizedRef
from hubflow.tasks import pipeline as stages


@flow(name="hubflow-train", persist_result=True, log_prints=True)
def train_flow(tokenized: TokenizedRef, base_model: PinnedRepo, train: TrainConfig, artifact_store: str,
               allow_pickle: bool = False, observe: ObserveSpec | None = None) -> CheckpointRef:
    """Fine-tune the pinned base model on the tokenized splits in the store; `observe` says who watches (a
    tracker's run, a sweep's trial)."""
    stages.pull_model(base_model, allow_pickle)
    return stages.train(tokenized, base_model, train, artifact_store, allow_pickle, observe)
