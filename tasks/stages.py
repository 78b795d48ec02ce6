"""The pipeline's Prefect tasks: verbs that take refs and configs and return refs.

Each task is a thin door onto a plain function (tasks/hub.py, data.py, train.py, infer.py, evaluate.py) plus what
Prefect adds: a cache key (tasks/caching.py) that also names the output folder, retries at network edges only, and
progress / report artifacts that the UI shows while the run moves.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Callable

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from . import hub, store
from .caching import stage_key
from .config import DataConfig, InferenceConfig, ModelConfig, PreprocessConfig, TrainConfig
from .refs import CheckpointRef, EvalRef, PinnedRepo, PredictionsRef, RawDataRef, TokenizedRef



def _transient(task, task_run, state) -> bool:
    """Retry network hiccups (connection errors, 429, 5xx), never bad input: that fails the same way every time."""
    import httpx
    import httpx2  # huggingface_hub's transport
    from huggingface_hub.errors import HfHubHTTPError

    try:
        state.result()
    except (httpx.TransportError, httpx2.TransportError, ConnectionError, TimeoutError):
        return True
    except HfHubHTTPError as e:
        return e.response is not None and (e.response.status_code == 429 or e.response.status_code >= 500)
    except BaseException:  # noqa: BLE001 - anything else is not worth a retry
        return False
    return False


NETWORK_RETRIES = dict(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=_transient)
MODULES = {
    "pull-dataset": ("tasks.hub", "tasks.data"),
    "preprocess": ("tasks.data",),
    "train": ("tasks.train", "tasks.resume"),  # every module whose code shapes the trained model
    "predict": ("tasks.infer",),
    "evaluate": ("tasks.evaluate",),
}


def _cache_key(stage: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    def key(_: TaskRunContext, parameters: dict[str, Any]) -> str:
        return f"{stage}-{stage_key(stage, MODULES[stage], parameters)}"

    return key


def _out(stage: str, artifact_store: str, inputs: dict[str, Any]) -> str:
    return store.join(artifact_store, stage, stage_key(stage, MODULES[stage], inputs))


class Progress:
    """A Prefect progress artifact fed by the stages' `on_progress(fraction, message)` callbacks (throttled)."""

    def __init__(self, key: str, description: str):
        self.id = create_progress_artifact(progress=0.0, key=key, description=description)
        self.last = 0.0

    def __call__(self, fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self.last < 2.0:
            return
        self.last = now
        update_progress_artifact(self.id, progress=round(100 * min(max(fraction, 0.0), 1.0), 1))


@task(name="pin-inputs", **NETWORK_RETRIES)
def pin_inputs(model: ModelConfig, data: DataConfig) -> tuple[PinnedRepo, PinnedRepo | None]:
    """Preflight: check the token, pin model and dataset revisions to shas, check the model's weight files."""
    hub.check_token()
    pinned_model = hub.pin(model.repo_id, "model", model.revision, "model")
    hub.check_model_files(pinned_model, model.allow_pickle_weights)
    pinned_data = hub.pin(data.source, "dataset", data.revision, "data") if data.is_hub else None
    return pinned_model, pinned_data


@task(name="pull-dataset", cache_key_fn=_cache_key("pull-dataset"), persist_result=True, **NETWORK_RETRIES)
def pull_dataset(data: DataConfig, pinned: PinnedRepo | None, artifact_store: str) -> RawDataRef:
    """Hub dataset at its sha (or s3://, local files) -> raw parquet splits in the store; checks columns and labels."""
    from . import data as data_lib

    out = _out("pull-dataset", artifact_store, {"data": data, "pinned": pinned})
    # Both paths check columns, empty splits and the label set before writing: bad data fails here, before training.
    if pinned is None:
        return data_lib.load_raw_files(data.source, data, out)
    return data_lib.write_raw_splits(hub.load_dataset_at(pinned, data.config_name), data, out, pinned.repo_id, pinned.sha)


@task(name="pull-model", **NETWORK_RETRIES)
def pull_model(model: PinnedRepo, allow_pickle: bool) -> str:
    """Download the model at its sha into the HF cache (zero requests when warm); returns the local folder."""
    return hub.model_dir(model, allow_pickle)


@task(name="preprocess", cache_key_fn=_cache_key("preprocess"), persist_result=True)
def preprocess(
    raw: RawDataRef, model: PinnedRepo, cfg: PreprocessConfig, data: DataConfig, artifact_store: str
) -> TokenizedRef:
    """Raw splits -> label ids, deterministic splits, batched fast tokenization, saved to the store."""
    from . import data as data_lib

    out = _out("preprocess", artifact_store, {"raw": raw, "model": model, "cfg": cfg, "data": data})
    return data_lib.preprocess(raw, hub.model_dir(model), cfg, data, out)


@task(name="train", cache_key_fn=_cache_key("train"), persist_result=True, retries=1)
def train(tokenized: TokenizedRef, model: PinnedRepo, cfg: TrainConfig, artifact_store: str) -> CheckpointRef:
    """Fine-tune with accelerate; a retry resumes from the last checkpoint in the store."""
    from .train import train_model

    import torch

    out = _out("train", artifact_store, {"tokenized": tokenized, "model": model, "cfg": cfg})
    if torch.cuda.device_count() > 1:  # a multi-GPU worker: one process per GPU, the same training code
        return _accelerate_launch(tokenized, hub.model_dir(model), model, cfg, out, torch.cuda.device_count())
    progress = Progress("train-progress", f"Fine-tuning {model.repo_id}@{model.sha[:10]}")
    return train_model(tokenized, hub.model_dir(model), model, cfg, out, on_progress=progress)


def _accelerate_launch(tokenized, model_dir: str, model: PinnedRepo, cfg: TrainConfig, out: str, gpus: int) -> CheckpointRef:
    """`accelerate launch --multi_gpu` of tasks.train, its output streamed to the run log; the ref comes via the store."""
    import subprocess
    import sys

    from prefect import get_run_logger

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
           "--mixed_precision", cfg.precision.value, "-m", "tasks.train",
           "--tokenized-ref", tokenized.model_dump_json(), "--model-dir", model_dir,
           "--base-model", model.model_dump_json(), "--config", cfg.model_dump_json(), "--out-uri", out]
    logger = get_run_logger()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # type: ignore[union-attr]
            logger.info(line.rstrip())
    if proc.returncode:
        raise RuntimeError(f"accelerate launch on {gpus} GPUs exited with {proc.returncode}")
    return CheckpointRef.model_validate(store.read_json(store.join(out, "checkpoint_ref.json")))


@task(name="predict", cache_key_fn=_cache_key("predict"), persist_result=True)
def predict(checkpoint: CheckpointRef, tokenized: TokenizedRef, split: str, cfg: InferenceConfig, artifact_store: str) -> PredictionsRef:
    """Batch inference over a split -> parquet shards + manifest; finished shards are skipped on rerun."""
    from .infer import predict as run_predict

    out = _out("predict", artifact_store, {"checkpoint": checkpoint, "tokenized": tokenized, "split": split, "cfg": cfg})
    progress = Progress("inference-progress", f"Batch inference over {split}")
    return run_predict(checkpoint.uri, checkpoint.fingerprint, tokenized, split, cfg, out, on_progress=progress)


@task(name="evaluate", cache_key_fn=_cache_key("evaluate"), persist_result=True)
def evaluate(predictions: PredictionsRef, checkpoint: CheckpointRef, artifact_store: str) -> EvalRef:
    """Metrics, per-class report and confusion matrix -> the store and a markdown artifact with the figures."""
    from .evaluate import evaluate_predictions, render_figures, render_markdown

    out = _out("evaluate", artifact_store, {"predictions": predictions, "checkpoint": checkpoint})
    report = evaluate_predictions(predictions, checkpoint.label_names, out, checkpoint.history_uri)
    full = store.read_json(report.uri)
    history = store.read_json(checkpoint.history_uri)
    figures = render_figures(full, history)
    images = "\n\n".join(
        f"![{name}](data:image/png;base64,{base64.b64encode(png).decode()})" for name, png in figures.items()
    )
    create_markdown_artifact(
        key="evaluation", markdown=f"{render_markdown(full)}\n\n{images}", description="Test-split evaluation"
    )
    return report
