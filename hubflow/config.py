"""Typed configuration: one pydantic model per stage, composed into `PipelineConfig`.

These models are the flow parameters, so Prefect renders them as the run form in its UI (names, descriptions,
bounds, defaults) and the server rejects invalid values before a run starts. YAML recipes in
`deployments/configs/` are validated against `PipelineConfig` (see `load_recipe`).

Only what every task kind shares lives here. A kind extends the sections it needs in its own package
(`hubflow/kinds/<kind>/settings.py`: a classifier's label column, a causal LM's LoRA and generation settings) and
composes them into its own `Config`; validating `PipelineConfig` (or a section) picks the kind's class by `task`,
so a recipe carries exactly its kind's keys and an unknown one is an error that names it.
"""

from __future__ import annotations

import importlib
import re
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Stage(BaseModel):
    # extra="forbid": a misspelt recipe key is an error that names the key, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


def _open_for_the_kinds(schema: dict[str, Any], cls: type) -> None:
    """The JSON schema of a shared class (a flow parameter's, which Prefect's server checks a run against) accepts
    more keys: a kind's own keys travel in it (a LoRA run's `train.lora` to the gpu pool's train flow). pydantic
    still checks them against the kind's class when the run starts."""
    if cls in _SHARED:
        schema["additionalProperties"] = True


class _Keyed(_Stage):
    """A settings model that task kinds may extend. Validating the shared class with a mapping whose `task` names a
    kind gives that kind's own class, so its keys survive a trip through JSON (a deployment's parameters, a run's
    summary); the whole config picks its kind by `task` (the registry's default when absent)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_open_for_the_kinds)

    @model_validator(mode="wrap")
    @classmethod
    def _the_kinds_own(cls, data: Any, handler):
        if not isinstance(data, dict) or cls not in _SHARED:
            return handler(data)  # a kind's own class, or an instance: as it is
        task = data.get("task")
        own = kind_settings(cls, task)
        if own is cls:  # this kind uses the shared section as it is
            return handler({k: v for k, v in data.items() if k != "task"} if task and "task" not in cls.model_fields
                           else data)
        return own.model_validate(data)

    def __new__(cls, *args, **kwargs):
        # `PipelineConfig(task=..., ...)` builds the kind's class too (its __init__ then validates as that class).
        if cls in _SHARED and not args and ("task" in kwargs or cls is PipelineConfig):
            cls = kind_settings(cls, kwargs.get("task"))
        return super().__new__(cls)


def kind_settings(shared: type[BaseModel], task: str | None) -> type[BaseModel]:
    """The class a kind uses for `shared` (PipelineConfig -> the kind's Config; a section -> its own or the shared)."""
    # The kinds are plugins found through entry points, and they import this module: load them on first use.
    kinds = importlib.import_module("hubflow.kinds")
    if shared.__name__ == "PipelineConfig":
        return kinds.kind_for(task or kinds.DEFAULT_TASK).settings
    if task is None:
        return shared
    for field in kinds.kind_for(task).settings.model_fields.values():
        own = field.annotation
        if isinstance(own, type) and issubclass(own, shared):
            return own
    return shared


class Precision(str, Enum):
    """Mixed-precision mode handed to accelerate (`no` = fp32)."""

    fp32 = "no"
    bf16 = "bf16"
    fp16 = "fp16"


class InferencePrecision(str, Enum):
    """The numbers batch inference computes with; part of every prediction shard's id."""

    auto = "auto"  # a GPU: bf16 (fp16 where bf16 is unsupported); a CPU: fp32
    fp32 = "fp32"  # full precision anywhere
    int8 = "int8"  # CPU workers, kinds that support it: the body's linear layers in int8 (dynamic quantization)


class DataFormat(str, Enum):
    """How the files of a folder source are read; by default each file's extension says."""

    parquet = "parquet"
    csv = "csv"
    tsv = "tsv"
    json = "json"  # JSON lines or a JSON array
    arrow = "arrow"


class ModelConfig(_Stage):
    repo_id: str = Field(description="Hub model repo to fine-tune, e.g. 'distilbert/distilbert-base-uncased'.")
    revision: str = Field("main", description="Branch, tag or commit sha; pinned to a sha at flow start.")
    allow_pickle_weights: bool = Field(
        False, description="Accept pytorch_model.bin (pickle) when the repo has no safetensors weights; it is loaded "
        "with torch's weights-only unpickler, which refuses code."
    )

    @field_validator("repo_id")
    @classmethod
    def _repo_id_shape(cls, v: str) -> str:
        return check_repo_id(v, "model.repo_id")


class DataConfig(_Keyed):
    source: str = Field(
        description="Hub dataset repo id ('stanfordnlp/imdb'), or an s3:// or local folder of parquet, csv, tsv, "
        "jsonl/json or arrow files."
    )
    config_name: str | None = Field(None, description="Dataset configuration (subset) name, if the repo has several.")
    format: DataFormat | None = Field(
        None, description="Read every file of a folder source as this format (for odd extensions); default: by the "
        "extension (.parquet, .csv, .tsv, .jsonl/.json, .arrow). Hub datasets are read by datasets itself."
    )
    revision: str = Field("main", description="Branch, tag or commit sha of a Hub dataset; pinned at flow start.")
    train_split: str = Field("train", description="Split to train on.")
    validation_split: str | None = Field(
        "validation", description="Split for per-epoch evaluation; carved from train when the dataset lacks it."
    )
    test_split: str | None = Field(
        "test", description="Split for batch inference and the final evaluation; carved from train when missing."
    )
    text_column: str = Field("text", description="Column holding the input text.")
    max_train_samples: int | None = Field(None, ge=1, description="Smoke knob: keep only the first N train rows.")
    max_eval_samples: int | None = Field(None, ge=1, description="Smoke knob: keep only N validation rows.")
    max_test_samples: int | None = Field(None, ge=1, description="Smoke knob: keep only N test rows.")

    @property
    def is_hub(self) -> bool:
        return not (self.source.startswith(("s3://", "file://", "/", "./", "../")) or Path(self.source).exists())


class PreprocessConfig(_Keyed):
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per example; longer texts are truncated.")
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of train carved out when no validation split."
    )
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of train carved out when no test split.")
    split_seed: int = Field(42, description="Seed of the deterministic split.")


class TrainConfig(_Keyed):
    epochs: int = Field(3, ge=1, le=100, description="Passes over the train split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(32, ge=1, le=4096, description="Examples per device per step.")
    eval_batch_size: int = Field(128, ge=1, le=8192, description="Examples per device per evaluation step.")
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.06, ge=0, lt=1, description="Share of steps spent warming the LR up (then linear decay)."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    precision: Precision = Field(Precision.fp32, description="Mixed precision: no (fp32), bf16 or fp16 (GPU only).")
    seed: int = Field(42, description="Seed for model init of the head, shuffling and dropout.")
    checkpoint_every_steps: int = Field(
        200, ge=1, description="Save a resumable checkpoint to the artifact store this often, so a retry resumes."
    )
    keep_resume_checkpoints: bool = Field(
        False, description="Keep the resume checkpoints once training completes (to extend the run with more steps "
        "later); off: they are removed, the final model and its history stay."
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory for long sequences, ~30% slower."
    )


class InferenceConfig(_Keyed):
    batch_size: int = Field(64, ge=1, le=8192, description="Max examples per batch (batches are length-sorted).")
    max_tokens_per_batch: int = Field(
        8192, ge=64, description="Token budget per batch: short texts batch wider, long ones narrower."
    )
    shard_size: int = Field(1000, ge=1, description="Rows per parquet shard; a rerun skips finished shards.")
    precision: InferencePrecision = Field(
        InferencePrecision.auto, description="auto: bf16 on a GPU, fp32 on CPU. fp32: full precision anywhere. int8 "
        "(CPU workers, kinds that support it): linear layers quantized to int8, ~2x faster on CPU, predictions "
        "differ slightly (docs/benchmarks.md: the demo's test accuracy in fp32 and int8).",
    )


class GateMode(str, Enum):
    """What a run must show before it is published."""

    off = "off"  # every run is published
    threshold = "threshold"  # the test metric reaches `threshold`
    champion = "champion"  # ... and beats the model already published at the target repo, on the same test set


class GateConfig(_Stage):
    """Champion/challenger: publish only a model that clears the bar and beats what is already published."""

    mode: GateMode = Field(GateMode.off, description="off: always publish; threshold: the metric must reach the "
                           "threshold; champion: it must also beat the published model on the same test set.")
    metric: str | None = Field(None, description="Test-split metric the gate compares; default: the task kind's own.")
    threshold: float = Field(0.0, ge=0, description="The challenger's metric must reach this (at most this, for a "
                             "metric where lower is better, like perplexity).")
    min_improvement: float = Field(0.0, ge=0, description="champion mode: the challenger must beat the champion by at "
                                   "least this much of the metric (absolute), e.g. 0.01 for one point of accuracy.")
    confidence: float = Field(0.95, ge=0.5, lt=1, description="champion mode: how sure a paired bootstrap over the "
                              "shared test rows must be that the challenger is better (p <= 1 - confidence).")


class ReviewMode(str, Enum):
    """Who has the last word before a release reaches the Hub's main branches."""

    none = "none"  # hubflow commits to main (after the gate)
    pr = "pr"  # hubflow opens pull requests; a person merges them; the Space follows the merged model
    approval = "approval"  # the flow pauses with an approval form in the Prefect UI; publishes when approved


class PublishConfig(_Keyed):
    enabled: bool = Field(False, description="Publish the model, its card and the predictions to the Hub.")
    repo_id: str | None = Field(
        None, description="Target model repo ('ns/name'); default: '<token user>/<base model name>-<dataset name>'."
    )
    private: bool = Field(True, description="Create the model and predictions repos private.")
    predictions_repo_id: str | None = Field(
        None, description="Target dataset repo for the predictions; default: '<model repo>-predictions'."
    )
    gate: GateConfig = Field(default_factory=GateConfig)
    review: ReviewMode = Field(ReviewMode.none, description="none: commit to main; pr: open Hub pull requests that a "
                               "person merges; approval: wait for an approval form in the Prefect UI.")
    review_timeout_seconds: int = Field(24 * 3600, ge=10, description="approval: give up (publish nothing) after this.")

    @field_validator("repo_id", "predictions_repo_id")
    @classmethod
    def _repo_ids(cls, v: str | None, info) -> str | None:
        return None if v is None else check_repo_id(v, f"publish.{info.field_name}")


class SpaceConfig(_Keyed):
    enabled: bool = Field(False, description="Deploy a gradio Space serving the published model.")
    space_id: str | None = Field(None, description="Target Space ('ns/name'); default: '<model repo>-demo'.")
    private: bool = Field(False, description="Create the Space private.")
    hardware: str | None = Field(None, description="Space hardware flavor, e.g. 'cpu-basic' or 't4-small'.")
    sleep_time_seconds: int | None = Field(None, ge=60, description="Put the Space to sleep after this idle time.")
    timeout_seconds: int = Field(600, ge=10, le=7200, description="How long to wait for the Space to reach RUNNING.")

    @field_validator("space_id")
    @classmethod
    def _space_id(cls, v: str | None) -> str | None:
        return None if v is None else check_repo_id(v, "space.space_id")

    @field_validator("hardware")
    @classmethod
    def _hardware(cls, v: str | None) -> str | None:
        return check_hardware(v, "space.hardware")


def check_hardware(v: str | None, field: str) -> str | None:
    """A Space hardware flavour the Hub has, or ValueError: a wrong one fails after the model is published; the
    client knows the list."""
    from huggingface_hub import SpaceHardware

    known = [h.value for h in SpaceHardware]
    if v is not None and v not in known:
        raise ValueError(f"{field}={v!r} is not a Space hardware flavour; known: {', '.join(known)}")
    return v


class OnTooLong(str, Enum):
    """What the server does with an input longer than the model's limit."""

    truncate = "truncate"  # cut it as batch inference does (the answers equal the batch predictions)
    refuse = "refuse"  # answer 422 with one sentence


class EndpointConfig(_Keyed):
    """The HTTP API of the published model (`hubflow serve`'s server, docs/serving.md), deployed as an API Space."""

    enabled: bool = Field(False, description="Deploy the published model as an HTTP API: the serving server in a "
                          "Docker Space (InferenceClient(base_url=...) and OpenAI clients, dynamic batching). Callers "
                          "send the bearer token in $HUBFLOW_ENDPOINT_TOKEN (or the Prefect Secret block named by "
                          "$HUBFLOW_ENDPOINT_TOKEN_BLOCK), stored as the Space's secret.")
    repo_id: str | None = Field(None, description="Target API Space ('ns/name'); default: '<model repo>-api'.")
    private: bool = Field(False, description="Create the Space private (on huggingface.co callers then also need "
                          "Hub access; the server's own bearer token guards a public one).")
    hardware: str | None = Field(None, description="Space hardware flavor, e.g. 'cpu-basic' or 't4-small'.")
    sleep_time_seconds: int | None = Field(None, ge=60, description="Put the Space to sleep after this idle time.")
    timeout_seconds: int = Field(600, ge=10, le=7200, description="How long to wait for the API to come up "
                                 "(RUNNING, then its /health ready).")
    max_batch_tokens: int = Field(8192, ge=64, description="Dynamic batching: padded tokens per batch (rows x "
                                  "longest row).")
    max_batch_size: int = Field(32, ge=1, le=4096, description="Dynamic batching: rows per batch.")
    max_wait_ms: int = Field(5, ge=0, le=10_000, description="How long a batch's first request waits for company.")
    max_queue: int = Field(256, ge=1, le=1_000_000, description="Requests waiting; one more is answered 429 with "
                           "Retry-After.")
    precision: InferencePrecision | None = Field(
        None, description="The numbers the server computes with (auto, fp32, int8 on CPU); default: the run's "
        "inference.precision, so the endpoint answers as the batch predictions it is smoke-tested against.")
    on_too_long: OnTooLong = Field(OnTooLong.truncate, description="An input over the model's limit: truncate (as "
                                   "batch inference) or refuse (422, one sentence).")

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        return None if v is None else check_repo_id(v, "endpoint.repo_id")

    @field_validator("hardware")
    @classmethod
    def _hardware(cls, v: str | None) -> str | None:
        return check_hardware(v, "endpoint.hardware")


class ExecutionMode(str, Enum):
    """Where the GPU stages run: in this process, or as runs of their own deployments on the gpu work pool."""

    local = "local"
    pools = "pools"


class ExecutionConfig(_Stage):
    mode: ExecutionMode = Field(
        ExecutionMode.local,
        description="local: every stage in this flow run (no server or pools needed). pools: training and batch "
        "inference run as deployments on the gpu pool (needs a Prefect server, workers and a shared s3:// store).",
    )
    train_deployment: str = Field("hubflow-train/gpu", description="Deployment ('flow/deployment') that trains.")
    predict_deployment: str = Field("hubflow-predict/gpu", description="Deployment that runs batch inference.")
    timeout_seconds: int = Field(6 * 3600, ge=60, description="Give up waiting for a dispatched stage after this.")
    parallelism: int | None = Field(
        None, ge=1, le=256,
        description="pools: batch inference fans out into this many predict runs at once, each a contiguous part of "
        "the shards; default: the predict pool's online workers (capped by the pool's concurrency limit).",
    )


class TrackingBackend(str, Enum):
    """Where a run's parameters, curves and reports are tracked."""

    none = "none"  # nowhere but the Prefect artifacts, summary.json and the card
    mlflow = "mlflow"  # an MLflow tracking server (the `tracking` extra: pip install 'hubflow[tracking]')


class TrackingConfig(_Stage):
    """Experiment tracking (hubflow/tracking/, docs/experiments.md): each run's parameters, per-step loss, per-epoch
    metrics, system figures, pinned shas and final report in MLflow; a published model becomes a registry version
    that points at its Hub repo and sha. Never on the critical path: an unreachable server is one warning."""

    backend: TrackingBackend = Field(TrackingBackend.none, description="none: no tracking; mlflow: log every run "
                                     "to an MLflow tracking server (needs the `tracking` extra).")
    uri: str | None = Field(None, description="MLflow tracking URI (http://host:5000, sqlite:///path.db); default: "
                            "$MLFLOW_TRACKING_URI, else a SQLite store in the `mlruns` folder at the root of a local "
                            "artifact_store (`<artifact_store>/mlruns/mlflow.db`, artifacts beside it).")
    experiment: str | None = Field(None, description="MLflow experiment the runs go to; default: the publish "
                                   "target's name (publish.repo_id), else '<base model name>-<dataset name>'.")

    @property
    def enabled(self) -> bool:
        return self.backend is not TrackingBackend.none

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        return check_tracking_uri(v, None)  # pydantic names the field


def check_tracking_uri(uri: str | None, field: str | None) -> str | None:
    """A tracking URI without credentials in it: it is logged, stored in the run's summary and shown; MLflow reads
    them from $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD / $MLFLOW_TRACKING_TOKEN instead."""
    from urllib.parse import urlparse

    if uri and "://" in uri and (urlparse(uri).username or urlparse(uri).password):
        raise ValueError(f"{field + ': ' if field else ''}no credentials in the URI (it is logged and stored); set "
                         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                         "workers' environment")
    return uri


class PipelineConfig(_Keyed):
    """Everything one pipeline run needs. Also the flow's parameters and the Prefect UI run form. Validated, it is
    the kind's own `Config` (hubflow/kinds/<kind>/settings.py), picked by `task`."""

    task: str = Field(description="What the model learns to do: a task kind's name (hubflow.kinds entry points).")
    model: ModelConfig
    data: DataConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    artifact_store: str = Field(
        "./.hubflow/store",
        description="fsspec URI where every stage writes its outputs: a local folder, or s3://bucket/prefix.",
    )

    @model_validator(mode="after")
    def _pools_need_a_shared_store(self) -> "PipelineConfig":
        check_shared_store(self.execution, self.artifact_store)
        return self

    @model_validator(mode="after")
    def _precision_needs_gpu_mode(self) -> "PipelineConfig":
        # fp16 fails deep inside accelerate after the model is loaded; say so first.
        if self.train.precision is Precision.fp16:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("train.precision=fp16 needs a CUDA GPU; on CPU use precision 'no' or 'bf16'")
        return self

    @model_validator(mode="after")
    def _inference_precision_fits(self) -> "PipelineConfig":
        if self.inference.precision is InferencePrecision.int8:
            import torch

            # local mode predicts on this machine; a pools worker checks its own device (hubflow.devices)
            local_gpu = self.execution.mode is ExecutionMode.local and torch.cuda.is_available()
            check_inference_precision(self.inference.precision, local_gpu)
        return self


def for_kind(section: BaseModel, task: str) -> BaseModel:
    """`section` as kind `task`'s own class (a flow given the shared SpaceConfig deploys a chat model's Space with
    the chat kind's defaults); unchanged when it already is one."""
    shared = next(c for c in type(section).__mro__ if c in _SHARED)
    own = kind_settings(shared, task)
    return section if isinstance(section, own) else own.model_validate(section.model_dump(exclude={"task"}))


# The shared classes, which hand a mapping that names a kind to the kind's own class.
_SHARED = {PipelineConfig, DataConfig, PreprocessConfig, TrainConfig, InferenceConfig, PublishConfig, SpaceConfig,
           EndpointConfig}


def check_shared_store(execution: ExecutionConfig, artifact_store: str) -> None:
    """Every worker of the pools must reach the store: a remote URI (s3://...) or an absolute path (one host, or a
    mount every worker shares). A relative path means something else in each worker's directory: fail before
    anything is dispatched."""
    if execution.mode is ExecutionMode.pools and not _reachable_by_every_worker(artifact_store):
        raise ValueError(f"execution.mode=pools needs a shared artifact_store (s3://..., or an absolute path every "
                         f"worker sees), not {artifact_store!r}")


def _reachable_by_every_worker(uri: str) -> bool:
    path = uri.removeprefix("file://")
    return path.startswith("/") or ("://" in path and not uri.startswith("file://"))


def check_inference_precision(precision: InferencePrecision, cuda: bool) -> None:
    """int8 is a CPU path: refuse it, in one line, on a machine with a GPU (a kind without it refuses it itself)."""
    if InferencePrecision(precision) is InferencePrecision.int8 and cuda:
        raise ValueError("inference.precision=int8 is for CPU workers (int8 linear layers have no CUDA kernels "
                         "here); on a GPU use auto (bf16)")


def check_repo_id(repo_id: str, field: str) -> str:
    """`repo_id` if the Hub client would accept it, else ValueError naming the field and the value in one line.

    huggingface_hub's own rule (`validate_repo_id`), so an id is refused here, before anything trains, exactly when
    the client would refuse it at publish time (`demo/a..b`, a name ending in `-`, more than 96 characters)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        # The client's message repeats the value after a colon; keep the rule, name the field once.
        reason = " ".join(str(e).split()).split(f": '{repo_id}'")[0].rstrip(".")
        raise ValueError(f"{field}={repo_id!r} is not a Hub repo id ({reason})") from None
    return repo_id


class RecipeError(ValueError):
    """A recipe or override that cannot be a PipelineConfig; the message is one line naming the file and the key."""


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML recipe, apply `key.sub=value` overrides (values parsed as YAML), validate.

    Raises pydantic's ValidationError for values (it names every field); `RecipeError` for a file that is not a
    YAML mapping or an override that is not `key=value`. A sweep recipe's `sweep:` section is what `hubflow sweep`
    searches (hubflow/experiments/space.py reads it); as a pipeline recipe it is one run at the recipe's own values."""
    raw = read_recipe(path, overrides)
    raw.pop("sweep", None)
    return PipelineConfig.model_validate(raw)


def read_recipe(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A YAML recipe as a mapping, with the `key.sub=value` overrides applied; not validated (load_recipe)."""
    import yaml

    try:
        raw = _read_yaml(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of settings, not a {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise RecipeError(f"--set {item!r}: expected key.sub=value, e.g. --set train.epochs=1")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {p!r} is a value, not a section")
        try:
            node[leaf] = _read_yaml(value)
        except yaml.YAMLError:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML (quote it)") from None
    return raw


def _read_yaml(text: str) -> Any:
    """YAML with YAML 1.2's booleans (true/false only): PyYAML follows YAML 1.1, where off/no/yes/on are booleans,
    so `publish.gate.mode: off` or `train.precision: no` would reach the enum as False. Read as strings, they match
    the enums' values; a bool setting still takes yes/no/on/off, since pydantic reads those strings as booleans."""
    import yaml

    return yaml.load(text, Loader=_recipe_loader())  # a SafeLoader subclass: plain values only


@lru_cache(maxsize=1)
def _recipe_loader():
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    RecipeLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    RecipeLoader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return RecipeLoader


def one_line(error: Exception) -> str:
    """A pydantic ValidationError (or any error) as one line: `field.path: message` of the first problem (+ count)."""
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return str(error).splitlines()[0]
    problems = errors()
    first = problems[0]
    loc = ".".join(str(part) for part in first["loc"]) or "recipe"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    if first["type"] == "extra_forbidden":  # the kinds own their keys: a classifier's recipe has no train.method
        return f"{loc}: not a setting of this task (a misspelt key, or another task kind's){more}"
    return f"{loc}: {first['msg'].removeprefix('Value error, ')}{more}"


class WatchedRepo(BaseModel):
    """One Hub repo branch the sensor (flows/watch.py) polls."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    repo_type: Literal["dataset", "model"] = Field("dataset", description="Kind of repo.")
    repo_id: str = Field(description="Hub repo id, e.g. 'stanfordnlp/imdb'.")
    branch: str = Field("main", description="Branch whose head is watched.")
