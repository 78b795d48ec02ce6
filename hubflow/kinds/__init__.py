"""Task kinds: what differs between learning to classify and learning to generate, behind one small protocol.

Every stage (pull, preprocess, train, predict, evaluate, gate, card, Space) is written once and asks the run's kind,
selected by `config.task`, for the parts that depend on the task. Adding a kind means a new folder here that
implements `Kind`, an entry in `_KINDS`, a recipe and tests; no stage changes.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from ..config import DataConfig, InferenceConfig, PreprocessConfig, SpaceConfig, TaskType, TrainConfig
from ..refs import ModelFacts, RawDataRef, TokenizedRef


class Direction(str, Enum):
    """Which way a metric improves; the gate and the best-checkpoint choice read it."""

    higher = "higher"
    lower = "lower"


class Kind(Protocol):
    task: TaskType
    pipeline_tag: str  # the Hub's pipeline tag for cards
    title: str  # what the Space says it does
    metrics: dict[str, Direction]  # test metrics the gate may compare, and their direction
    default_metric: str  # what the gate compares unless publish.gate.metric says otherwise
    batch_invariant: bool  # do batch size and token budget leave the predictions unchanged?
    train_columns: list[str]  # the tokenized columns a training batch holds
    space_app: Path  # the folder of the Space's app template
    modules: tuple[str, ...]  # the modules whose code shapes what this kind trains (cache keys)

    # data
    def raw_columns(self, data: DataConfig, available: list[str]) -> dict[str, str]: ...
    def check_raw(self, splits: dict, data: DataConfig, columns: dict[str, str]) -> None: ...
    def prepare(self, raw: RawDataRef, model_dir: str, cfg: PreprocessConfig, data: DataConfig,
                out_uri: str) -> TokenizedRef: ...
    def prepare_inference(self, ds, data: DataConfig, model_dir: str, facts: ModelFacts,
                          out_root: str) -> TokenizedRef: ...

    # training
    def load_for_training(self, model_dir: str, facts: ModelFacts, cfg: TrainConfig, allow_pickle: bool): ...
    def collator(self, tokenizer, on_gpu: bool): ...
    def validate(self, model, eval_dl, accelerator, facts: ModelFacts) -> dict[str, float]: ...
    def rank(self, metrics: dict[str, float]) -> tuple: ...
    def save_model(self, model, tokenizer, out: Path, base_model) -> dict[str, Path]: ...  # {"model", ["adapter"]}

    # inference and evaluation
    def output_settings(self, cfg: InferenceConfig) -> dict[str, Any]: ...  # settings that change predictions
    def load_predictor(self, folder: Path, device, dtype) -> Any: ...
    def predict_shard(self, predictor, part, cfg: InferenceConfig, shard_index: int): ...
    def score(self, table, facts: ModelFacts) -> dict[str, Any]: ...
    def headline(self, report: dict[str, Any]) -> dict[str, float]: ...
    def render(self, report: dict[str, Any], history: dict | None) -> tuple[str, dict[str, bytes]]: ...
    def summarize(self, table) -> str: ...
    def own_rows(self, table) -> dict[str, Any]: ...  # per-row outcomes of this run's model, for the paired gate
    def champion_rows(self, model_dir: str, table, facts: ModelFacts, cfg: InferenceConfig, metric: str) -> dict: ...
    def metric(self, rows: dict[str, Any], name: str, idx) -> float: ...  # a metric over a subset of the rows

    # publishing and the Space
    def card_summary(self, facts: ModelFacts, metrics: dict[str, float], rows: int) -> str: ...
    def card_eval_results(self, metrics: dict[str, float]) -> list[dict[str, Any]]: ...
    def card_usage(self, repo_id: str, revision: str, facts: ModelFacts) -> str: ...
    def prediction_files_table(self, table, facts: ModelFacts): ...
    def prediction_columns(self, facts: ModelFacts) -> list[tuple[str, str]]: ...
    def space_variables(self, facts: ModelFacts, space: SpaceConfig) -> dict[str, str]: ...
    def reference_answers(self, rows: list[dict], model_dir: str, facts: ModelFacts,
                          space: SpaceConfig) -> list[tuple[str, str]]: ...
    def answer_texts(self, model_dir: str, texts: list[str], facts: ModelFacts, space: SpaceConfig) -> list[str]: ...
    def ask_space(self, client, text: str) -> str: ...
    def answers_match(self, got: str, want: str | None, facts: ModelFacts) -> bool: ...


def kind_for(task: TaskType | str) -> Kind:
    """The kind that implements `task`."""
    task = TaskType(task)
    if task not in _KINDS:
        raise ValueError(f"task={task.value!r} has no implementation; known: {[t.value for t in _KINDS]}")
    module = __import__(_KINDS[task], globals(), fromlist=["KIND"], level=1)
    return module.KIND


# Imported on first use: a kind's torch/transformers imports cost seconds that `--help` and the UI never need.
_KINDS: dict[TaskType, str] = {TaskType.text_classification: "text_classification", TaskType.causal_lm: "causal_lm"}
