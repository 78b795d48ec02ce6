"""Nightly batch inference with a published classifier: pin → pull → stage the model → tokenize → predict → record.

    from flows.batch import batch_inference
    from tasks.config import DataConfig
    batch_inference("me/my-classifier", DataConfig(source="me/incoming", test_split="today"))

Deployed as `hubflow-batch-inference/nightly` (deployments/prefect.yaml). Model and dataset are pinned to shas at flow
start. The split read is `data.test_split` (DataConfig's "split for batch inference"), at most `max_test_samples`
rows of it; only the text column is used, so unlabeled data works and a label column, if present, is ignored (the
training pipeline is where predictions are scored). Predictions keep the split's row order (`row_id`).

In `execution.mode=pools` the prediction runs on the gpu pool (`hubflow-predict/gpu`, like the pipeline's), so
everything it reads must be in the shared store: the model is copied there under its repo and sha (once per sha),
the tokenized texts under their content fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks import dispatch, stages, store
from tasks.config import DataConfig, ExecutionConfig, ExecutionMode, InferenceConfig, ModelConfig
from tasks.refs import BatchResult, CheckpointRef, PinnedRepo, PredictionsRef, TokenizedRef


@flow(name="hubflow-batch-inference", persist_result=True, log_prints=True)
def batch_inference(
    model_repo_id: str,
    data: DataConfig,
    model_revision: str = "main",
    max_length: int = 128,
    inference: InferenceConfig = InferenceConfig(),
    artifact_store: str = "./.hubflow/store",
    execution: ExecutionConfig = ExecutionConfig(),
) -> BatchResult:
    """Predict `data.test_split` of `data.source` with the classifier `model_repo_id@model_revision`."""
    split = _check(data, max_length, inference, artifact_store, execution)
    model, dataset = stages.pin_inputs(ModelConfig(repo_id=model_repo_id, revision=model_revision), data)
    model_dir = stages.pull_model(model, False)
    checkpoint = stage_model(model_dir, model, artifact_store)
    tokenized = tokenize_inputs(data, dataset, model_dir, checkpoint.label_names, max_length, artifact_store)
    predictions = dispatch.predict(checkpoint, tokenized, split, inference, artifact_store, execution)
    return record_batch(model, dataset, data, checkpoint, tokenized, predictions, artifact_store)


def _check(data: DataConfig, max_length: int, inference: InferenceConfig, artifact_store: str,
           execution: ExecutionConfig) -> str:
    """Refuse settings that would fail late or be silently ignored; returns the split to predict."""
    if data.test_split is None:
        raise ValueError("data.test_split names the split batch inference reads; it is null")
    if not 8 <= max_length <= 8192:
        raise ValueError(f"max_length={max_length} is outside 8..8192")
    if execution.mode is ExecutionMode.pools and "://" not in artifact_store:
        raise ValueError(f"execution.mode=pools needs a shared artifact_store (s3://...), not {artifact_store!r}")
    return data.test_split


@task(name="stage-model", retries=3, retry_delay_seconds=[2, 5, 15])
def stage_model(model_dir: str, model: PinnedRepo, artifact_store: str) -> CheckpointRef:
    """Copy the pulled model into the store (once per repo sha) -> a CheckpointRef any worker can load."""
    from tasks.train import weights_fingerprint

    root = store.join(artifact_store, "models", model.repo_id.replace("/", "--"), model.sha)
    ref_uri = store.join(root, "checkpoint_ref.json")
    if store.exists(ref_uri):  # written after the copy: its presence means the copy is complete
        return CheckpointRef.model_validate(store.read_json(ref_uri))
    config = json.loads(Path(model_dir, "config.json").read_text())
    id2label = config.get("id2label") or {}
    ref = CheckpointRef(
        uri=store.put_dir(model_dir, store.join(root, "model")),
        fingerprint=weights_fingerprint(model_dir),
        label_names=[id2label[str(i)] for i in range(len(id2label))],
        # A published model, not one trained here: no training metrics, history or hardware to report.
        base_model=model, metrics={}, history_uri="", train_seconds=0.0, hardware="",
    )
    store.write_json(ref_uri, ref.model_dump(mode="json"))
    return ref


@task(name="tokenize-inputs", **stages.NETWORK_RETRIES)
def tokenize_inputs(data: DataConfig, dataset: PinnedRepo | None, model_dir: str, label_names: list[str],
                    max_length: int, artifact_store: str) -> TokenizedRef:
    """The split at its pinned sha (or from s3:// / local files) -> texts tokenized by the model's own tokenizer."""
    from tasks import data as data_lib
    from tasks import hub

    split = data.test_split
    if dataset is None:
        ds = data_lib.load_files_split(data.source, split)
    else:
        splits = hub.load_dataset_at(dataset, data.config_name)
        if split not in splits:
            raise ValueError(f"data.test_split={split!r} not in {dataset.repo_id}@{dataset.sha[:10]}; "
                             f"available splits: {sorted(splits)}")
        ds = splits[split]
    return data_lib.tokenize_for_inference(ds, data.text_column, split, model_dir, label_names, max_length,
                                           store.join(artifact_store, "batch-inputs"), data.max_test_samples)


@task(name="record-batch")
def record_batch(model: PinnedRepo, dataset: PinnedRepo | None, data: DataConfig, checkpoint: CheckpointRef,
                 tokenized: TokenizedRef, predictions: PredictionsRef, artifact_store: str) -> BatchResult:
    """Write the run's summary to the store and a markdown artifact with the predicted-label counts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tasks.infer import read_manifest

    run_id = flow_run.get_id()
    summary_uri = store.join(artifact_store, "batch", run_id or "local", "summary.json")
    result = BatchResult(
        flow_run_id=run_id, model=model, dataset=dataset, source=data.source, split=data.test_split,
        model_uri=checkpoint.uri, tokenized=tokenized, predictions=predictions, summary_uri=summary_uri,
    )
    store.write_json(summary_uri, result.model_dump(mode="json"))
    fs, root = store.fs_for(predictions.uri)
    counts: dict[str, int] = {}
    for shard in read_manifest(predictions)["shards"]:  # one column per shard: the counts, not the whole table
        column = pq.read_table(f"{root}/{shard['file']}", columns=["pred_label"], filesystem=fs).column(0)
        for row in pc.value_counts(column).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    source = f"{dataset.repo_id}@{dataset.sha[:10]}" if dataset else data.source
    lines = [f"# Batch inference: {predictions.rows} rows", "",
             f"* model `{model.repo_id}@{model.sha[:10]}`, data `{source}` split `{data.test_split}`",
             f"* predictions `{predictions.uri}` ({predictions.shards} shards)", "",
             "| predicted label | rows | share |", "|---|---:|---:|"]
    lines += [f"| {label} | {n} | {n / max(predictions.rows, 1):.1%} |" for label, n in sorted(counts.items())]
    create_markdown_artifact(key="batch-inference", markdown="\n".join(lines), description="Nightly batch inference")
    print(f"{predictions.rows} rows predicted with {model.repo_id}@{model.sha[:10]}: {predictions.uri}")
    return result
