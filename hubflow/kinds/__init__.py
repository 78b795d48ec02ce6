"""Task kinds: what differs between learning to classify, to generate, to embed, behind five small roles.

Every stage (pull, preprocess, train, predict, evaluate, gate, card, Space) is written once and asks the run's kind,
selected by `config.task`, for the parts that depend on the task. A kind is one package that owns its settings
(`settings.Config`, the recipe's keys for this task), its model facts, data, model, metrics, memory estimate, card
sections and Space app, and one entry point in the `hubflow.kinds` group naming its `KIND`:

    [project.entry-points."hubflow.kinds"]
    text-classification = "hubflow.kinds.text_classification:KIND"

so a package of its own can add a kind without editing hubflow. `KindDefaults` holds what most kinds share: a kind
writes only what differs. tests/test_kinds.py checks every registered kind against `Kind`.
"""

from __future__ import annotations

import inspect
from enum import Enum
from functools import lru_cache
from importlib.metadata import distributions
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, Union, runtime_checkable

from pydantic import Field

from ..config import (
    DataConfig,
    InferenceConfig,
    PipelineConfig,
    PreprocessConfig,
    PublishConfig,
    SpaceConfig,
    TrainConfig,
    for_kind,
)
from ..refs import CheckpointRef, ModelFacts, RawDataRef, TokenizedRef

GROUP = "hubflow.kinds"
DEFAULT_TASK = "text-classification"  # what a recipe without `task:` means (recipes written before kinds existed)


class Direction(str, Enum):
    """Which way a metric improves; the gate and the best-checkpoint choice read it."""

    higher = "higher"
    lower = "lower"


class DataRole(Protocol):
    """Raw splits -> the checked, tokenized data this kind trains and predicts on."""

    def raw_columns(self, data: DataConfig, available: list[str]) -> dict[str, str]: ...
    def check_raw(self, splits: dict, data: DataConfig, columns: dict[str, str]) -> None: ...
    def prepare(self, raw: RawDataRef, model_dir: str, cfg: PreprocessConfig, data: DataConfig,
                out_uri: str) -> TokenizedRef: ...
    def prepare_inference(self, ds, data: DataConfig, model_dir: str, facts: ModelFacts,
                          out_root: str) -> TokenizedRef: ...


class TrainingRole(Protocol):
    """The one training loop (stages/train.py) asks the kind for its model, batches, validation and save."""

    train_columns: list[str]  # the tokenized columns a training batch holds

    def load_for_training(self, model_dir: str, facts: ModelFacts, cfg: TrainConfig, allow_pickle: bool): ...
    def collator(self, tokenizer, on_gpu: bool): ...
    def validate(self, model, eval_dl, accelerator, facts: ModelFacts) -> dict[str, float]: ...
    def rank(self, metrics: dict[str, float]) -> tuple: ...
    def save_model(self, model, tokenizer, out: Path, base_model) -> dict[str, Path]: ...  # {"model", ["adapter"]}
    def folder_facts(self, name: str, facts: ModelFacts, base_model) -> ModelFacts: ...
    def trainable_parameters(self, params: int, arch: dict[str, int], cfg: TrainConfig) -> tuple[float, float]: ...


class PredictionRole(Protocol):
    """Batch inference (stages/predict.py) loads the kind's predictor and asks it for one shard's rows."""

    batch_invariant: bool  # do batch size and token budget leave the predictions unchanged?

    def output_settings(self, cfg: InferenceConfig) -> dict[str, Any]: ...  # settings that change predictions
    def load_predictor(self, folder: Path, device, dtype) -> Any: ...
    def predict_shard(self, predictor, part, cfg: InferenceConfig, shard_index: int): ...
    def summarize(self, table) -> str: ...


class EvaluationRole(Protocol):
    """The test report, its headline metrics and their directions, and the gate's paired comparison."""

    metrics: dict[str, Direction]  # test metrics the gate may compare, and their direction
    default_metric: str  # what the gate compares unless publish.gate.metric says otherwise

    def score(self, table, facts: ModelFacts) -> dict[str, Any]: ...
    def headline(self, report: dict[str, Any]) -> dict[str, float]: ...
    def render(self, report: dict[str, Any], history: dict | None) -> tuple[str, dict[str, bytes]]: ...
    def own_rows(self, table) -> dict[str, Any]: ...  # per-row outcomes of this run's model, for the paired gate
    def champion_rows(self, model_dir: str, table, facts: ModelFacts, cfg: InferenceConfig, metric: str) -> dict: ...
    def metric(self, rows: dict[str, Any], name: str, idx) -> float: ...  # a metric over a subset of the rows


class ReleaseRole(Protocol):
    """What is published (folder, card, predictions table) and the Space that serves it."""

    pipeline_tag: str  # the Hub's pipeline tag for cards
    title: str  # what the Space says it does
    space_app: Path  # the folder of the Space's app template

    def published_folder(self, checkpoint: CheckpointRef, publish: PublishConfig) -> tuple[str, str, str]: ...
    def card_metadata(self, facts: ModelFacts) -> dict[str, str]: ...  # library_name, base_model_relation, weights
    def card_hyperparameters(self, config: PipelineConfig) -> dict[str, Any]: ...
    def card_summary(self, facts: ModelFacts, metrics: dict[str, float], rows: int) -> str: ...
    def card_eval_results(self, metrics: dict[str, float]) -> list[dict[str, Any]]: ...
    def card_usage(self, repo_id: str, revision: str, facts: ModelFacts) -> str: ...
    def prediction_files_table(self, table, facts: ModelFacts): ...
    def prediction_columns(self, facts: ModelFacts) -> list[tuple[str, str]]: ...
    def space_variables(self, facts: ModelFacts, space: SpaceConfig) -> dict[str, str]: ...
    def space_readme(self, facts: ModelFacts, variables: dict[str, str]) -> dict[str, str]: ...
    def reference_answers(self, rows: list[dict], model_dir: str, facts: ModelFacts,
                          space: SpaceConfig) -> list[tuple[str, str]]: ...
    def answer_texts(self, model_dir: str, texts: list[str], facts: ModelFacts, space: SpaceConfig) -> list[str]: ...
    def ask_space(self, client, text: str) -> str: ...
    def answers_match(self, got: str, want: str | None, facts: ModelFacts) -> bool: ...


@runtime_checkable
class Kind(DataRole, TrainingRole, PredictionRole, EvaluationRole, ReleaseRole, Protocol):
    task: str  # the recipe's `task:` (the entry point's name)
    settings: type[PipelineConfig]  # the kind's own pipeline config: the shared sections with its keys
    facts: type[ModelFacts]  # the kind's own model facts (hubflow.json)
    modules: tuple[str, ...]  # the modules whose code shapes what this kind trains (cache keys)

    def foreign_facts(self, folder: Path, config: dict) -> ModelFacts | None: ...  # a model hubflow did not train


class KindDefaults:
    """What most kinds do; a kind overrides what differs."""

    batch_invariant: ClassVar[bool] = True

    def own(self, section):
        """`section` as this kind's class: a caller that built the shared one (a flow's form, a test, a benchmark)
        gets this kind's defaults for the rest."""
        return for_kind(section, self.task)

    def rank(self, m: dict[str, float]) -> tuple:
        """Best = the default metric in its direction; on a tie, the lower validation loss."""
        value = m[f"eval_{self.default_metric}"]
        return (value if self.metrics[self.default_metric] is Direction.higher else -value), -m["eval_loss"]

    def save_model(self, model, tokenizer, out: Path, base_model) -> dict[str, Path]:
        model.save_pretrained(out / "model")  # transformers 5 always writes safetensors
        tokenizer.save_pretrained(out / "model")
        return {"model": out / "model"}

    def folder_facts(self, name: str, facts: ModelFacts, base_model) -> ModelFacts:
        return facts  # every saved folder is the whole model

    def trainable_parameters(self, params: int, arch: dict[str, int], cfg: TrainConfig) -> tuple[float, float]:
        """(trainable parameters, bytes per stored weight) for the memory estimate: a full fine-tune in fp32."""
        return float(params), 4.0

    def output_settings(self, cfg: InferenceConfig) -> dict[str, Any]:
        return {}  # batch size and the token budget change padding, not outputs (attention masks)

    def published_folder(self, checkpoint: CheckpointRef, publish: PublishConfig) -> tuple[str, str, str]:
        return checkpoint.uri, checkpoint.fingerprint, "model.safetensors"

    def card_metadata(self, facts: ModelFacts) -> dict[str, str]:
        return {"library_name": "transformers", "base_model_relation": "finetune", "weights": "model"}

    def card_hyperparameters(self, config: PipelineConfig) -> dict[str, Any]:
        """The card's hyper-parameter table: the train section, then the preprocess one."""
        hyper = config.train.model_dump(mode="json", exclude={"task"})
        hyper.update({f"preprocess.{k}": v
                      for k, v in config.preprocess.model_dump(mode="json", exclude={"task"}).items()})
        return hyper

    def prediction_files_table(self, table, facts: ModelFacts):
        return table

    def space_readme(self, facts: ModelFacts, variables: dict[str, str]) -> dict[str, str]:
        return {}  # the README template's own placeholders beyond the shared ones

    def answers_match(self, got: str, want: str | None, facts: ModelFacts) -> bool:
        return got == want if want is not None else bool(got)

    def foreign_facts(self, folder: Path, config: dict) -> ModelFacts | None:
        return None


@lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    """{task: entry point} of every installed kind (hubflow's own and any package's). Every copy of a package's
    metadata is read, not only the first found: a stale `hubflow.egg-info` in the working directory (a build's
    leftover) would otherwise hide the installed one's kinds."""
    return {ep.name: ep for dist in distributions() for ep in dist.entry_points if ep.group == GROUP}


@lru_cache(maxsize=None)
def kind_for(task: str | Enum) -> Kind:
    """The kind that implements `task`, loaded on first use."""
    task = getattr(task, "value", task)
    found = _registry()
    if task not in found:
        raise ValueError(f"task={task!r} has no implementation; known: {sorted(found)}")
    return found[task].load()


def tasks() -> list[str]:
    """Every installed kind's task name."""
    return sorted(_registry())


def all_kinds() -> list[Kind]:
    return [kind_for(task) for task in tasks()]


def config_form() -> Any:
    """The pipeline config as a flow parameter: a union of the kinds' own configs keyed by `task`, so the Prefect UI
    renders a typed form for each kind and the server checks a run's parameters against its kind's."""
    configs = tuple(kind.settings for kind in all_kinds())
    return Annotated[Union[configs], Field(discriminator="task")] if len(configs) > 1 else configs[0]


def missing_members(kind: Any) -> list[str]:
    """The `Kind` members `kind` lacks, or has with another call signature (for tests and a plugin's author)."""
    gaps = []
    for role in Kind.__mro__:
        if role in (Kind, Protocol, object) or not getattr(role, "_is_protocol", False):
            continue
        for name in list(getattr(role, "__annotations__", {})) + [n for n, v in vars(role).items()
                                                                  if inspect.isfunction(v) and not n.startswith("_")]:
            if not hasattr(kind, name):
                gaps.append(name)
            elif inspect.isfunction(getattr(role, name, None)):
                want = list(inspect.signature(getattr(role, name)).parameters)[1:]
                have = list(inspect.signature(getattr(kind, name)).parameters)
                if len(have) != len(want):
                    gaps.append(f"{name}{tuple(have)} (want {tuple(want)})")
    for name in ("task", "settings", "facts", "modules"):
        if not hasattr(kind, name):
            gaps.append(name)
    return gaps
