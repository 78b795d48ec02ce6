"""Nightly batch inference with a published model: pin -> pull -> stage the model -> prepare inputs -> predict.

    from hubflow.flows.batch import batch_inference
    from hubflow.config import DataConfig
    batch_inference("me/my-classifier", DataConfig(source="me/incoming", test_split="today"))

Deployed as `hubflow-batch-inference/nightly` (deployments/prefect.yaml). Model and dataset are pinned to shas at flow
start. The split read is `data.test_split` (DataConfig's "split for batch inference"), at most `max_test_samples`
rows of it; only the input column is used, so unlabeled data works and a label column, if present, is ignored (the
training pipeline is where predictions are scored). Predictions keep the split's row order (`row_id`). What the
model is (task, tokens per input, labels) comes from its own facts (`hubflow.json`), never from a default here.

In `execution.mode=pools` the prediction runs on the gpu pool (`hubflow-predict/gpu`, like the pipeline's), so
everything it reads must be in the shared store: the model is copied there under its repo and sha (once per sha),
the prepared inputs under their content fingerprint.
"""

from __future__ import annotations

from prefect import flow

from hubflow.config import DataConfig, ExecutionConfig, InferenceConfig, ModelConfig, check_shared_store
from hubflow.refs import BatchResult
from hubflow.tasks import dispatch
from hubflow.tasks import pipeline as stages
from hubflow.tasks.batch import record_batch, stage_model, tokenize_inputs


@flow(name="hubflow-batch-inference", persist_result=True, log_prints=True)
def batch_inference(
    model_repo_id: str,
    data: DataConfig,
    model_revision: str = "main",
    inference: InferenceConfig = InferenceConfig(),
    artifact_store: str = "./.hubflow/store",
    execution: ExecutionConfig = ExecutionConfig(),
) -> BatchResult:
    """Predict `data.test_split` of `data.source` with the model `model_repo_id@model_revision`."""
    if data.test_split is None:
        raise ValueError("data.test_split names the split batch inference reads; it is null")
    check_shared_store(execution, artifact_store)
    model, dataset = stages.pin_inputs(ModelConfig(repo_id=model_repo_id, revision=model_revision), data)
    model_dir = stages.pull_model(model, False)
    checkpoint = stage_model(model_dir, model, artifact_store)
    tokenized = tokenize_inputs(data, dataset, model_dir, checkpoint, artifact_store)
    predictions = dispatch.predict(checkpoint, tokenized, data.test_split, inference, artifact_store, execution)
    return record_batch(model, dataset, data, checkpoint, tokenized, predictions, artifact_store)
