"""The training pipeline's Prefect tasks: verbs that take refs and configs and return refs.

Each task is a thin door onto a plain function of the library (hubflow.doors, hubflow.stages, the task kind) plus
what Prefect adds: a cache key that also names the output folder (tasks/common.py), retries at network edges only,
and progress / report artifacts that the UI shows while the run moves.
"""

from __future__ import annotations

import base64

from prefect import task
from prefect.artifacts import create_markdown_artifact

from hubflow.config import DataConfig, InferenceConfig, ModelConfig, PreprocessConfig, TrainConfig
from hubflow.doors import hub
from hubflow.kinds import kind_for
from hubflow.refs import (
    CheckpointRef,
    EvalRef,
    ObserveSpec,
    PinnedRepo,
    PredictionsPart,
    PredictionsRef,
    RawDataRef,
    TokenizedRef,
)
from hubflow.tasks.common import NETWORK_RETRIES, Progress, cache_key, out_uri


@task(name="pin-inputs", **NETWORK_RETRIES)
def pin_inputs(model: ModelConfig, data: DataConfig) -> tuple[PinnedRepo, PinnedRepo | None]:
    """Preflight: check the token, pin model and dataset revisions to shas, check the model's weight files."""
    hub.check_token()
    pinned_model = hub.pin(model.repo_id, "model", model.revision, "model")
    hub.check_model_files(pinned_model, model.allow_pickle_weights)
    pinned_data = hub.pin(data.source, "dataset", data.revision, "data") if data.is_hub else None
    return pinned_model, pinned_data


@task(name="pull-dataset", cache_key_fn=cache_key("pull-dataset"), persist_result=True, **NETWORK_RETRIES)
def pull_dataset(data: DataConfig, pinned: PinnedRepo | None, task: str, artifact_store: str) -> RawDataRef:
    """Hub dataset at its sha (or s3://, local files) -> raw parquet splits in the store, checked by the task kind."""
    from hubflow.stages import pull

    out = out_uri("pull-dataset", dict(data=data, pinned=pinned, task=task, artifact_store=artifact_store))
    kind = kind_for(task)
    if pinned is None:
        return pull.load_raw_files(data.source, data, kind, out)
    return pull.write_raw_splits(hub.load_dataset_at(pinned, data.config_name), data, kind, out, pinned.repo_id,
                                 pinned.sha)


@task(name="pull-model", **NETWORK_RETRIES)
def pull_model(model: PinnedRepo, allow_pickle: bool) -> str:
    """Download the model at its sha into the HF cache (zero requests when warm); returns the local folder."""
    return hub.model_dir(model, allow_pickle)


@task(name="preprocess", cache_key_fn=cache_key("preprocess"), persist_result=True)
def preprocess(raw: RawDataRef, model: PinnedRepo, cfg: PreprocessConfig, data: DataConfig, task: str,
               artifact_store: str) -> TokenizedRef:
    """Raw splits -> the task kind's training data (for classifiers: label ids, carved splits, token ids)."""
    out = out_uri("preprocess", dict(raw=raw, model=model, cfg=cfg, data=data, task=task,
                                     artifact_store=artifact_store))
    return kind_for(task).prepare(raw, hub.model_dir(model), cfg, data, out)


def _not_stopped(task, task_run, state) -> bool:
    """Retry a crashed training (it resumes), not one an observer stopped: a pruned sweep trial is done."""
    from hubflow.stages.observers import StopTrial

    try:
        state.result()
    except StopTrial:
        return False
    except BaseException:  # noqa: BLE001 - a crash, an OOM, a lost worker: the retry resumes from the checkpoint
        return True
    return False


@task(name="train", cache_key_fn=cache_key("train"), persist_result=True, retries=1, retry_condition_fn=_not_stopped)
def train(tokenized: TokenizedRef, model: PinnedRepo, cfg: TrainConfig, artifact_store: str,
          allow_pickle: bool = False, observe: ObserveSpec | None = None) -> CheckpointRef:
    """Fine-tune with accelerate (one process per GPU on a multi-GPU worker: the stage decides); a retry resumes
    from the last checkpoint in the store. `observe` (a tracker, a sweep's pruner) is not part of the key."""
    from hubflow.stages.train import train_model

    out = out_uri("train", dict(tokenized=tokenized, model=model, cfg=cfg, artifact_store=artifact_store,
                                allow_pickle=allow_pickle))
    model_dir = hub.model_dir(model, allow_pickle)
    progress = Progress("train-progress", f"Fine-tuning {model.repo_id}@{model.sha[:10]}", "train")
    return train_model(tokenized, model_dir, model, cfg, out, on_progress=progress, allow_pickle=allow_pickle,
                       observe=observe)


@task(name="predict", cache_key_fn=cache_key("predict"), persist_result=True)
def predict(checkpoint: CheckpointRef, tokenized: TokenizedRef, split: str, cfg: InferenceConfig,
            artifact_store: str) -> PredictionsRef:
    """Batch inference over a split -> parquet shards + manifest; finished shards are skipped on rerun."""
    from hubflow.stages.predict import predict as run_predict

    out = out_uri("predict", dict(checkpoint=checkpoint, tokenized=tokenized, split=split, cfg=cfg,
                                  artifact_store=artifact_store))
    progress = Progress("inference-progress", f"Batch inference over {split}", "predict")
    return run_predict(checkpoint.uri, checkpoint.fingerprint, tokenized, split, cfg, out, on_progress=progress)


@task(name="predict-part", cache_key_fn=cache_key("predict"), persist_result=True)
def predict_part(checkpoint: CheckpointRef, tokenized: TokenizedRef, split: str, cfg: InferenceConfig,
                 artifact_store: str, part: int, parts: int) -> PredictionsPart:
    """One part of a fanned-out batch inference: its block of shards, into the whole job's folder."""
    from hubflow.stages.predict import predict_part as run_part

    # The job's folder, not the part's: every part (and a later run with another fan-out) shares its shards.
    out = out_uri("predict", dict(checkpoint=checkpoint, tokenized=tokenized, split=split, cfg=cfg,
                                  artifact_store=artifact_store))
    progress = Progress("inference-progress", f"Batch inference over {split}, part {part + 1} of {parts}", "predict")
    return run_part(checkpoint.uri, checkpoint.fingerprint, tokenized, split, cfg, out, part, parts, progress)


@task(name="merge-predictions")
def merge_predictions(parts: list[PredictionsPart]) -> PredictionsRef:
    """The parts' manifests -> one predictions ref, checked to hold every input row once, in order."""
    from hubflow.stages.predict import merge_parts

    merged = merge_parts(parts)
    print(f"merged {len(parts)} prediction parts: {merged.rows} rows in {merged.shards} shards")
    return merged


@task(name="evaluate", cache_key_fn=cache_key("evaluate"), persist_result=True)
def evaluate(predictions: PredictionsRef, checkpoint: CheckpointRef, artifact_store: str) -> EvalRef:
    """The kind's metrics and report -> the store, and a markdown artifact with the tables and figures."""
    from hubflow.stages.evaluate import evaluate_predictions, render

    out = out_uri("evaluate", dict(predictions=predictions, checkpoint=checkpoint, artifact_store=artifact_store))
    report = evaluate_predictions(predictions, checkpoint.facts, out, checkpoint.history_uri)
    markdown, figures = render(report, checkpoint.facts, checkpoint.history_uri)
    images = "\n\n".join(
        f"![{name}](data:image/png;base64,{base64.b64encode(png).decode()})" for name, png in figures.items()
    )
    create_markdown_artifact(key="evaluation", markdown=f"{markdown}\n\n{images}", description="Test-split evaluation")
    return report
