"""Batch inference as a flow of its own (a gpu-pool deployment the pipeline and the batch flow dispatch to).

With `parts` > 1 the run predicts only part `part` of the shards and returns that part's ref; the dispatching flow
starts one run per part and merges them (tasks/dispatch.py).
"""

from __future__ import annotations

from prefect import flow

from hubflow.config import InferenceConfig
from hubflow.refs import CheckpointRef, PredictionsPart, PredictionsRef, TokenizedRef
from hubflow.tasks import pipeline as stages


@flow(name="hubflow-predict", persist_result=True, log_prints=True)
def predict_flow(
    checkpoint: CheckpointRef, tokenized: TokenizedRef, split: str, inference: InferenceConfig, artifact_store: str,
    part: int = 0, parts: int = 1,
) -> PredictionsRef | PredictionsPart:
    """Predict a tokenized split (or one part of it) with a checkpoint from the store; finished shards are skipped."""
    if parts == 1:
        return stages.predict(checkpoint, tokenized, split, inference, artifact_store)
    return stages.predict_part(checkpoint, tokenized, split, inference, artifact_store, part, parts)
