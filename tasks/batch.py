"""Batch inference's Prefect tasks: stage a published model in the store, tokenize the inputs, record the run."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from hubflow.config import DataConfig
from hubflow.doors import hub, store
from hubflow.kinds import kind_for
from hubflow.refs import BatchResult, CheckpointRef, PinnedRepo, PredictionsRef, TokenizedRef
from hubflow.tasks.common import NETWORK_RETRIES


@task(name="stage-model", **NETWORK_RETRIES)
def stage_model(model_dir: str, model: PinnedRepo, artifact_store: str) -> CheckpointRef:
    """Copy the pulled model into the store (once per repo sha) -> a CheckpointRef any worker can load."""
    from hubflow.stages.facts import read_facts, weights_fingerprint

    root = store.join(artifact_store, "models", model.repo_id.replace("/", "--"), model.sha)
    ref_uri = store.join(root, "checkpoint_ref.json")
    if store.exists(ref_uri):  # written after the copy: its presence means the copy is complete
        return CheckpointRef.model_validate(store.read_json(ref_uri))
    ref = CheckpointRef(
        uri=store.put_dir(model_dir, store.join(root, "model")),
        fingerprint=weights_fingerprint(model_dir),
        facts=read_facts(model_dir),
        # A published model, not one trained here: no training metrics, history or hardware to report.
        base_model=model, metrics={}, history_uri="", train_seconds=0.0, hardware="",
    )
    store.write_json(ref_uri, ref.model_dump(mode="json"))
    return ref


@task(name="tokenize-inputs", **NETWORK_RETRIES)
def tokenize_inputs(data: DataConfig, dataset: PinnedRepo | None, model_dir: str, checkpoint: CheckpointRef,
                    artifact_store: str) -> TokenizedRef:
    """The split at its pinned sha (or from s3:// / local files) -> inputs prepared with the model's own tokenizer
    and length (its facts), stored under their content fingerprint."""
    from hubflow.stages import pull

    split = data.test_split
    if dataset is None:
        ds = pull.load_files_split(data.source, split, data.format)
    else:
        splits = hub.load_dataset_at(dataset, data.config_name)
        if split not in splits:
            raise ValueError(f"data.test_split={split!r} not in {dataset.repo_id}@{dataset.sha[:10]}; "
                             f"available splits: {sorted(splits)}")
        ds = splits[split]
    kind = kind_for(checkpoint.facts.task)
    return kind.prepare_inference(ds, data, model_dir, checkpoint.facts, store.join(artifact_store, "batch-inputs"))


@task(name="record-batch")
def record_batch(model: PinnedRepo, dataset: PinnedRepo | None, data: DataConfig, checkpoint: CheckpointRef,
                 tokenized: TokenizedRef, predictions: PredictionsRef, artifact_store: str) -> BatchResult:
    """Write the run's summary to the store and a markdown artifact with the kind's summary of the predictions."""
    from hubflow.stages.predict import read_predictions

    run_id = flow_run.get_id()
    summary_uri = store.join(artifact_store, "batch", run_id or "local", "summary.json")
    result = BatchResult(
        flow_run_id=run_id, model=model, dataset=dataset, source=data.source, split=data.test_split,
        model_uri=checkpoint.uri, tokenized=tokenized, predictions=predictions, summary_uri=summary_uri,
    )
    store.write_json(summary_uri, result.model_dump(mode="json"))
    source = f"{dataset.repo_id}@{dataset.sha[:10]}" if dataset else data.source
    summary = kind_for(checkpoint.facts.task).summarize(read_predictions(predictions))
    lines = [f"# Batch inference: {predictions.rows} rows", "",
             f"* model `{model.repo_id}@{model.sha[:10]}`, data `{source}` split `{data.test_split}`",
             f"* predictions `{predictions.uri}` ({predictions.shards} shards)", "", summary]
    create_markdown_artifact(key="batch-inference", markdown="\n".join(lines), description="Nightly batch inference")
    print(f"{predictions.rows} rows predicted with {model.repo_id}@{model.sha[:10]}: {predictions.uri}")
    return result
