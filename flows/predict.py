"""Batch inference as a flow of its own (a gpu-pool deployment the pipeline and the batch flow dispatch to)."""

from __future__ import annotations

from prefect import flow

from hubflow.config import InferenceConfig
from hubflow.refs import CheckpointRef, PredictionsRef, TokenizedRef
from hubflow.tasks import pipeline as stages


@flow(name="hubflow-predict", persist_result=True, log_prints=True)
def predict_flow(
    checkpoint: CheckpointRef, tokenized: TokenizedRef, split: str, inference: InferenceConfig, artifact_store: str
) -> PredictionsRef:
    """Predict a tokenized split with a checkpoint from the store; finished shards are skipped."""
    return stages.predict(checkpoint, tokenized, split, inference, artifact_store)
