"""The `sweep:` section of a recipe: what to search, by which metric, how many trials, how pruned, stored where.

    config, sweep = load_sweep_recipe("deployments/configs/demo-sweep.yaml", ["sweep.trials=4"])
    plan = check_sweep(config, sweep)          # every space key a recipe field, every bound a valid value: one line
    trial_config = apply_params(config, {"train.learning_rate": 3e-4})

A space maps recipe field paths (`train.learning_rate`, `preprocess.max_length`) to distributions; a trial's
parameters are written into the config and validated as the recipe itself is, so a trial can never run a config
that `hubflow run` would refuse. Trials only train: `data.`, `preprocess.` and `train.` fields can be searched
(the model, the inference, publish and execution settings belong to the sweep as a whole).
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import ExecutionMode, PipelineConfig, one_line, read_recipe
from ..kinds import Direction, kind_for

SEARCHABLE = ("data", "preprocess", "train")  # the sections a trial's own run reads
PER_TRIAL_DATA = ("data", "preprocess")  # a key here: each trial pulls and tokenizes its own data


class Distribution(str, Enum):
    """How a parameter is drawn."""

    choice = "choice"  # one of `choices`
    uniform = "uniform"  # a float in [low, high] (on a grid of `step` when given)
    log_uniform = "log_uniform"  # a float in [low, high], uniform in log space (learning rates)
    int = "int"  # an integer in [low, high] (every `step`)


class Param(BaseModel):
    """One searched recipe field."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str = Field(description="The recipe field, as a path: train.learning_rate, preprocess.max_length, ...")
    distribution: Distribution = Field(description="choice, uniform, log_uniform or int.")
    low: float | None = Field(None, description="uniform, log_uniform, int: the smallest value.")
    high: float | None = Field(None, description="uniform, log_uniform, int: the largest value.")
    step: float | None = Field(None, gt=0, description="uniform: a grid; int: the stride (default 1).")
    choices: list[float | int | str | bool] | None = Field(None, description="choice: the values to pick from.")

    @model_validator(mode="after")
    def _shape(self) -> "Param":
        d = self.distribution
        if d is Distribution.choice:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError(f"{self.field}: a choice takes `choices` (a non-empty list), not low/high")
            return self
        if self.choices is not None or self.low is None or self.high is None:
            raise ValueError(f"{self.field}: {d.value} takes `low` and `high`, not choices")
        if not self.low < self.high:
            raise ValueError(f"{self.field}: {d.value}: low ({self.low:g}) must be below high ({self.high:g})")
        if d is Distribution.log_uniform and self.low <= 0:
            raise ValueError(f"{self.field}: log_uniform needs low > 0")
        if d is Distribution.int and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError(f"{self.field}: int takes whole low, high and step")
        return self

    def bounds(self) -> list[Any]:
        """The values that must be valid for the field: the choices, or the two ends."""
        if self.distribution is Distribution.choice:
            return list(self.choices)
        ends = [self.low, self.high]
        return [int(v) for v in ends] if self.distribution is Distribution.int else ends

    def holds(self, value: Any) -> bool:
        """Whether `value` is a point of this distribution (the recipe's own value, enqueued as trial 0)."""
        if self.distribution is Distribution.choice:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        return self.distribution is not Distribution.int or float(value).is_integer()

    def describe(self) -> str:
        """`log_uniform [1e-05, 0.001]`, `choice {0, 0.06, 0.1}`: for the card and the table."""
        if self.distribution is Distribution.choice:
            return "choice {" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.choices) + "}"
        step = f" step {self.step:g}" if self.step else ""
        return f"{self.distribution.value} [{self.low:g}, {self.high:g}]{step}"


class Pruner(str, Enum):
    """When a trial is stopped early, judged at each epoch's validation."""

    median = "median"  # below the median of the other trials at the same epoch
    successive_halving = "successive_halving"  # not in the top 1/3 of its rung (ASHA, asynchronous)
    none = "none"  # every trial runs all its epochs


def _listed(space: Any) -> Any:
    """`{field: {distribution: ...}}` (a recipe's mapping) -> `[{field: ..., distribution: ...}]`."""
    if isinstance(space, dict):
        return [{"field": key, **value} if isinstance(value, dict) else value for key, value in space.items()]
    return space


class SweepConfig(BaseModel):
    """A hyper-parameter sweep over a recipe (`hubflow sweep RECIPE`): Optuna's TPE sampler, one training per trial,
    the best trial predicted, evaluated and released as a single run is."""

    model_config = ConfigDict(extra="forbid", title="sweep")
    # A list (the Prefect UI renders a list of typed rows, not a mapping); a recipe may write the mapping it reads
    # best, `train.learning_rate: {distribution: ..., ...}`, which becomes the list.
    space: Annotated[list[Param], BeforeValidator(_listed)] = Field(
        min_length=1, description="The searched recipe fields, each with its distribution, e.g. {field: "
        "train.learning_rate, distribution: log_uniform, low: 1.0e-5, high: 1.0e-3}. data., preprocess. and train. "
        "fields can be searched.")
    metric: str | None = Field(None, description="Validation metric the trials are ranked by (and pruned on); "
                               "default: the task kind's own (a classifier's macro_f1).")
    direction: Direction | None = Field(None, description="higher or lower is better; default: the metric's own.")
    trials: int = Field(12, ge=1, le=10_000, description="Trials in the study (a resumed sweep counts the ones it "
                        "finished before).")
    parallelism: int | None = Field(None, ge=1, le=256, description="Trials at a time; default: the gpu pool's "
                                    "online workers (pools), 1 (local: trainings in one process run one by one).")
    pruner: Pruner = Field(Pruner.median, description="median, successive_halving or none.")
    startup_trials: int = Field(3, ge=0, description="Trials that finish unpruned before the median pruner may stop "
                                "any (they set the bar).")
    warmup_epochs: int = Field(0, ge=0, description="Evaluations every trial gets before it may be pruned.")
    start_from_recipe: bool = Field(True, description="Trial 0 is the recipe's own values (where they lie in the "
                                    "space): the sweep's best is then never worse than the recipe on validation.")
    storage: str | None = Field(None, description="The study's durable storage: an RDB URL every worker reaches "
                                "(postgresql://user:${PGPASSWORD}@host/db; ${VAR} is read from the environment), or "
                                "journal:///abs/path; default: a journal file under a local artifact store, "
                                "{artifact_store}/sweeps/<study>.journal.")
    study: str | None = Field(None, description="The study's name; default: derived from the recipe and the sweep "
                              "settings, so running the same sweep again resumes it.")
    seed: int = Field(42, description="Seed of the TPE sampler.")

    @field_validator("space")
    @classmethod
    def _once_each(cls, space: list[Param]) -> list[Param]:
        seen = [p.field for p in space]
        if twice := sorted({f for f in seen if seen.count(f) > 1}):
            raise ValueError(f"{twice[0]} is searched twice")
        return space

    @property
    def params(self) -> dict[str, Param]:
        """The space by field path."""
        return {p.field: p for p in self.space}


class SweepError(ValueError):
    """A sweep that cannot run as written; the message is one line naming the key."""


class Plan(BaseModel):
    """What check_sweep decided: the metric, its direction, whether trials share one tokenization."""

    model_config = ConfigDict(frozen=True)
    metric: str
    direction: Direction
    shared_data: bool
    study: str


def load_sweep_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineConfig, SweepConfig]:
    """A recipe with a `sweep:` section -> (the pipeline config, the sweep); `--set sweep.trials=4` works too."""
    raw = read_recipe(path, overrides)
    section = raw.pop("sweep", None)
    if section is None:
        raise SweepError(f"{path}: no sweep: section (the space to search, the metric, the trials)")
    config = PipelineConfig.model_validate(raw)
    try:
        return config, SweepConfig.model_validate(section)
    except ValidationError as e:
        raise SweepError(f"sweep.{one_line(e)}") from None


def check_sweep(config: PipelineConfig, sweep: SweepConfig) -> Plan:
    """Every space key a searchable recipe field whose bounds are valid values, the metric the kind's: else
    SweepError in one line, before anything is pulled or trained."""
    for key, param in sweep.params.items():
        section = key.split(".")[0]
        if section not in SEARCHABLE:
            raise SweepError(f"sweep.space.{key}: not a searchable recipe field (a trial only trains: search "
                             f"{', '.join(s + '.*' for s in SEARCHABLE)})")
        _leaf(config, key)
        for value in param.bounds():
            apply_params(config, {key: value})
    if config.execution.mode is ExecutionMode.local and (sweep.parallelism or 1) > 1:
        raise SweepError(f"sweep.parallelism={sweep.parallelism} needs execution.mode=pools: trainings in one process "
                         "run one at a time (accelerate's state belongs to the process)")
    if sweep.storage is None and "://" in config.artifact_store.removeprefix("file://"):
        raise SweepError(remote_store_needs_storage(config.artifact_store))
    kind = kind_for(config.task)
    metric = sweep.metric or kind.default_metric
    if metric not in kind.metrics and metric != "loss":
        raise SweepError(f"sweep.metric={metric!r} is not a {config.task} metric; known: "
                         f"{', '.join(sorted([*kind.metrics, 'loss']))}")
    direction = sweep.direction or kind.metrics.get(metric, Direction.lower)
    shared = not any(key.split(".")[0] in PER_TRIAL_DATA for key in sweep.params)
    return Plan(metric=metric, direction=direction, shared_data=shared, study=sweep.study or study_name(config, sweep))


def remote_store_needs_storage(artifact_store: str) -> str:
    return (f"sweep.storage: a {artifact_store.split('://')[0]}:// artifact store needs a study storage every worker "
            "reaches (an RDB URL, e.g. postgresql://user:${PGPASSWORD}@host/db)")


def _leaf(config: PipelineConfig, key: str) -> None:
    """SweepError unless `key` names a setting (not a section) of this kind's config."""
    node: Any = config
    for i, part in enumerate(key.split(".")):
        fields = type(node).model_fields if isinstance(node, BaseModel) else {}
        if part not in fields:
            where = ".".join(key.split(".")[:i]) or "the recipe"
            raise SweepError(f"sweep.space.{key}: not a recipe field ({where} has no {part!r}; a misspelt key, or "
                             f"another task kind's)")
        node = getattr(node, part)
    if isinstance(node, BaseModel):
        raise SweepError(f"sweep.space.{key}: a section, not a setting")


def apply_params(config: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """`config` with each `section.field` of `params` set, validated as a recipe (SweepError naming the key)."""
    raw = config.model_dump(mode="json")
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise SweepError(f"sweep.space: {' '.join(f'{k}={v!r}' for k, v in params.items())} is not a valid recipe: "
                         f"{one_line(e)}") from None


def study_name(config: PipelineConfig, sweep: SweepConfig) -> str:
    """`sweep-<hash>` of what the trials' results depend on (the recipe but where it runs and what it publishes, and
    the search), not of the trial count or parallelism: the same sweep run again, or with more trials, resumes."""
    recipe = config.model_dump(mode="json", exclude={"execution", "publish", "space", "endpoint", "inference",
                                                     "artifact_store"})
    search = sweep.model_dump(mode="json", include={"space", "metric", "direction", "pruner", "startup_trials",
                                                    "warmup_epochs", "start_from_recipe", "seed"})
    digest = hashlib.sha256(json.dumps([recipe, search], sort_keys=True).encode()).hexdigest()
    return f"sweep-{digest[:12]}"
