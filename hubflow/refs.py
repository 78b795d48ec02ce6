"""Small frozen references that tasks return and flows pass along.

Never a model, a Dataset or a tensor: those live in the artifact store (an fsspec URI) or the Hub (a repo at a sha),
so a ref is cheap to hash for caching, cheap to persist as a Prefect result, and valid on any worker.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_validator

from .config import PipelineConfig


class Ref(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PinnedRepo(Ref):
    """A Hub repo pinned to the commit a revision resolved to at flow start."""

    repo_id: str
    repo_type: Literal["model", "dataset", "space"]
    revision: str
    sha: str


class TrackingTarget(Ref):
    """Where a training logs its run (hubflow/tracking): the MLflow tracking `uri` and `experiment`; `run_id` to log
    into a run that exists (the pipeline's), or `parent_run_id` to start a child run under it (a sweep's trial)."""

    uri: str
    experiment: str
    run_id: str | None = None
    parent_run_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = {}
    url: str | None = None  # the run's page in the MLflow UI (a tracking server's URI only)


class TrialTarget(Ref):
    """A sweep's trial that a training reports to (hubflow/experiments/pruning.py): the study in its `storage` (a
    URL every worker reaches), the trial, the validation metric (`eval_macro_f1`) and its direction, and the pruner
    (rebuilt on the worker: Optuna does not store it)."""

    storage: str
    study: str
    trial: int
    trial_id: int
    metric: str
    direction: Literal["higher", "lower"]
    pruner: Literal["median", "successive_halving", "none"] = "median"
    startup_trials: int = 0
    warmup_epochs: int = 0


class ObserveSpec(Ref):
    """Who watches a training (hubflow/stages/observers.py): travels with the train call through every hop as JSON;
    not part of the training's identity (its resume key and cache key)."""

    tracking: TrackingTarget | None = None
    trial: TrialTarget | None = None


class RawDataRef(Ref):
    """Raw splits as parquet files in the store: `{uri}/{split}.parquet`, keeping the source's column names.

    `columns` maps the task kind's roles to them, e.g. {"text": "review", "label": "stars"}."""

    uri: str
    fingerprint: str
    splits: dict[str, int]
    columns: dict[str, str]
    source: str
    source_sha: str | None = None


class ModelFacts(Ref):
    """What a model is, with one home: what it does and the tokens per input it was trained with; its kind adds the
    rest (a classifier's label space, a chat model's template) in its own subclass, picked by `task`.

    Written next to the weights as `hubflow.json` (and so published with them): batch inference, the Space and the
    preview read these instead of re-defaulting them."""

    # Open in the JSON schema (a flow parameter's, checked by Prefect's server): a kind's facts carry more keys;
    # pydantic checks them against the kind's own facts class.
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=lambda schema, cls: (
        schema.update(additionalProperties=True) if cls is ModelFacts else None))

    task: str
    max_length: int
    adapter_base: PinnedRepo | None = None  # adapter repos (LoRA): the base model the adapter goes on

    @model_validator(mode="wrap")
    @classmethod
    def _the_kinds_own(cls, data: Any, handler):
        if cls is ModelFacts and isinstance(data, dict) and "task" in data:
            return _kind_facts(data["task"]).model_validate(data)
        return handler(data)

    def __new__(cls, *args, **kwargs):
        if cls is ModelFacts and "task" in kwargs:
            cls = _kind_facts(kwargs["task"])
        return super().__new__(cls)


def _kind_facts(task: str) -> type[ModelFacts]:
    # The kinds are plugins found through entry points, and they import this module: load them on first use.
    return importlib.import_module("hubflow.kinds").kind_for(task).facts


class TokenizedRef(Ref):
    """Tokenized splits saved with `save_to_disk` under `uri`, and the facts of a model trained (or run) on them."""

    uri: str
    fingerprint: str
    splits: dict[str, int]
    facts: SerializeAsAny[ModelFacts]


class CheckpointRef(Ref):
    """A `save_pretrained` folder (safetensors, tokenizer, `hubflow.json` facts) in the store; a LoRA run also has
    the adapter alone (`adapter_uri`), which publish.format=adapter publishes."""

    uri: str
    fingerprint: str
    adapter_uri: str | None = None
    adapter_fingerprint: str | None = None
    facts: SerializeAsAny[ModelFacts]
    base_model: PinnedRepo
    metrics: dict[str, float]
    history_uri: str
    train_seconds: float
    hardware: str


class PredictionsRef(Ref):
    """Parquet shards plus `manifest.json` under `uri`; rows come back in input order."""

    uri: str
    rows: int
    shards: int
    model_fingerprint: str
    data_fingerprint: str


class PredictionsPart(Ref):
    """One part of a fanned-out batch inference: its shards under `uri` (the whole job's folder) and its own manifest
    at `manifest_uri`. `merge_parts` turns all of a job's parts into one PredictionsRef."""

    uri: str
    manifest_uri: str
    part: int
    parts: int
    rows: int
    shards: int


class EvalRef(Ref):
    """Metrics of a model on a split, with the report stored as JSON at `uri`."""

    uri: str
    split: str
    metrics: dict[str, float]


class GateDecision(Ref):
    """Whether a challenger was promoted, and why (champion/challenger on the same test set)."""

    promoted: bool
    metric: str
    challenger: float
    champion: float | None
    champion_sha: str | None
    threshold: float
    reason: str
    improvement: float | None = None  # challenger minus champion, in the better direction (champion mode)
    p_value: float | None = None  # bootstrap probability that the challenger is not better
    min_improvement: float = 0.0
    confidence: float | None = None


class PublishedRepo(Ref):
    """A Hub repo at the commit a publish made (or found unchanged: `created` False)."""

    repo_id: str
    repo_type: Literal["model", "dataset", "space"]
    sha: str
    url: str
    created: bool
    tag: str | None = None
    pr_num: int | None = None  # publish.review=pr: the pull request that carries this commit (sha is its head)
    pr_url: str | None = None


class SpaceDeployment(Ref):
    """A Space serving a published model: where it runs and the stage it reached."""

    space_id: str
    sha: str
    stage: str
    url: str | None
    model: PublishedRepo


class PipelineResult(Ref):
    """What a training pipeline run produced: its config, every pinned sha, every stage's output, the metrics.

    Stored as `summary_uri` (JSON), which is what the publish flow takes to publish an existing run."""

    flow_run_id: str | None
    flow_run_url: str | None = None
    config: SerializeAsAny[PipelineConfig]
    base_model: PinnedRepo
    dataset: PinnedRepo | None
    raw: RawDataRef
    tokenized: TokenizedRef
    checkpoint: CheckpointRef
    predictions: PredictionsRef
    evaluation: EvalRef
    summary_uri: str
    published: PublishOutcome | None = None
    space: SpaceDeployment | None = None
    endpoint: SpaceDeployment | None = None  # the model's HTTP API: an API Space (stages/endpoint.py)
    tracking: TrackingTarget | None = None  # the run's MLflow run (tracking.backend=mlflow)
    sweep: SweepRecord | None = None  # the sweep this run's training was the best trial of (flows/sweep.py)


class SweepRecord(Ref):
    """The sweep a published model came out of, for its card and summary: the study, its space, the trials."""

    study: str
    storage: str  # without a password
    space: dict[str, str]  # field path -> distribution, e.g. {"train.learning_rate": "log_uniform [1e-05, 0.001]"}
    metric: str  # the validation metric the trials were ranked by
    direction: Literal["higher", "lower"]
    trials: int
    complete: int
    pruned: int
    failed: int
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    flow_run_id: str | None = None


class PublishOutcome(Ref):
    """What a publish did: the gate's decision, then the model and predictions repos (None when not promoted)."""

    decision: GateDecision
    model: PublishedRepo | None = None
    predictions: PublishedRepo | None = None


class BatchResult(Ref):
    """What a batch inference run (flows/batch.py) produced, with the shas it was pinned to."""

    flow_run_id: str | None
    model: PinnedRepo
    dataset: PinnedRepo | None
    source: str
    split: str
    model_uri: str
    tokenized: TokenizedRef
    predictions: PredictionsRef
    summary_uri: str
