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

import copy
import inspect
import json
from enum import Enum
from functools import lru_cache
from importlib.metadata import distributions
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol, Union, runtime_checkable

from pydantic import BeforeValidator, Field

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
    serve_handler: Path | None  # the kind's HTTP handler file (serve.py; docs/serving.md), None: not servable

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
    serve_handler: ClassVar[Path | None] = None  # a kind that can be served names its serve.py

    @property
    def monitor(self):
        """The kind's monitor role (`<kind package>.monitor`: observe a batch, score drift against the reference,
        live accuracy), imported on first use; None for a kind without one (the monitor flow then says so)."""
        import importlib

        name = f"{type(self).__module__}.monitor"
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            return None

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
    """The pipeline config as a flow parameter: pydantic validates it as a union of the kinds' own configs keyed by
    `task` (each kind's keys only; another kind's key is an error that names it), while its JSON schema, which the
    Prefect UI renders as the run form and the server checks a run against, is one flat typed form (`FlatForm`)."""
    configs = tuple(kind.settings for kind in all_kinds())
    if len(configs) == 1:
        return configs[0]
    # A mapping without `task` is the default kind's, as a recipe without `task:` is (the union needs its tag).
    default_task = BeforeValidator(lambda v: {"task": DEFAULT_TASK, **v} if isinstance(v, dict) else v)
    return Annotated[Union[configs], Field(discriminator="task"), default_task, FlatForm()]


class FlatForm:
    """The JSON schema of a union of the kinds' configs, as ONE typed object: `task` an enum of the installed kinds
    (default `DEFAULT_TASK`); each section the union of the kinds' properties, generated from their own schemas.

    Prefect 3.9.1's UIs cannot offer a pydantic `oneOf`+discriminator as a form: the default (V1) UI shows an untyped
    JSON editor, the V2 UI one tab per kind of which only the first submits a valid config (tests/test_ui_form.py).
    A flat form renders typed in both. A property every kind has in the same shape is listed once; a property only
    some kinds have carries them in its description ("(causal-lm) Rank of the adapter matrices."), with that kind's
    default; one the kinds shape differently is merged (nested models key by key, enums into one). The server's
    check then accepts any installed kind's keys; the flow's own validation (the union) refuses another kind's key
    by name when the run starts."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        union = handler(core_schema)
        mapping = union.get("discriminator", {}).get("mapping")
        if not mapping:  # not the union this is made for: leave it as pydantic writes it
            return union
        order = sorted(mapping, key=lambda t: (t != DEFAULT_TASK, t))
        configs = {task: handler.resolve_ref_schema({"$ref": mapping[task]}) for task in order}
        form = _merge_objects(configs, handler.resolve_ref_schema, top=True)
        form["properties"]["task"] = {
            "title": "Task", "type": "string", "enum": order, "default": DEFAULT_TASK,
            "description": "What the model learns to do: the task kind whose keys the config may carry (a key "
                           "marked with another kind's name is refused when the run starts).",
        }
        form["properties"] = {"task": form["properties"].pop("task"), **form["properties"]}
        # Required in the form (the UI then shows a plain picker with the default chosen); a mapping without `task`
        # given to the flow in Python is the default kind's (config_form's BeforeValidator).
        form["required"] = ["task"] + [r for r in form.get("required", []) if r != "task"]
        return form


def _deref(schema: dict[str, Any], resolve) -> dict[str, Any]:
    """A property's schema with a `$ref` to a model replaced by (a copy of) the model's schema, the property's own
    keys (description, default) over it; anything else unchanged."""
    if "$ref" not in schema:
        return schema
    target = resolve({"$ref": schema["$ref"]})
    if target.get("type") != "object" or "properties" not in target:
        return schema  # an enum or another leaf: the reference stays
    own = {k: v for k, v in schema.items() if k != "$ref"}
    return {**copy.deepcopy(target), **own}


def _mark(schema: dict[str, Any], tasks: list[str], resolve) -> dict[str, Any]:
    """A copy of a property only `tasks` have, each description (nested models' fields too) prefixed with them, and
    its default said in the description instead of given: both UIs fill every default into the config they
    submit, so a default here would put this kind's key into every other kind's config."""
    schema = copy.deepcopy(_deref(schema, resolve))
    text = schema.get("description", "").strip()
    if (default := schema.pop("default", None)) is not None and "properties" not in schema:
        text = f"{text} Default: {json.dumps(default)}." if text else f"Default: {json.dumps(default)}."
    if text or "properties" in schema:
        schema["description"] = f"({', '.join(tasks)}) {text or schema.get('title', '')}".strip()
    if schema.get("type") == "boolean":  # a bare boolean is a switch, which submits false when left alone
        schema["enum"] = [True, False]
        del schema["type"]
    if "properties" in schema:
        schema["properties"] = {name: _mark(prop, tasks, resolve) for name, prop in schema["properties"].items()}
    return schema


def _enum_values(schema: dict[str, Any], resolve) -> tuple[list, bool] | None:
    """(values, may be null) of an enum or an optional enum (`anyOf: [enum, null]`), else None."""
    options = schema.get("anyOf", [schema])
    values, nullable = [], False
    for option in options:
        option = resolve({"$ref": option["$ref"]}) if "$ref" in option else option
        if option.get("type") == "null":
            nullable = True
        elif "enum" in option:
            values += [v for v in option["enum"] if v not in values]
        elif "const" in option:
            values += [option["const"]] if option["const"] not in values else []
        else:
            return None
    return (values, nullable) if values else None


def _describe(variants: dict[str, dict[str, Any]]) -> str | None:
    """One description for a property the kinds describe differently: the first kind's, then each other one, after
    the kinds that give it."""
    first = next(iter(variants.values())).get("description")
    others: dict[str, list[str]] = {}
    for task, variant in variants.items():
        if (text := variant.get("description")) and text != first:
            others.setdefault(text, []).append(task)
    return " ".join([first or ""] + [f"({', '.join(t)}) {text}" for text, t in others.items()]).strip() or None


def _merge(variants: dict[str, dict[str, Any]], resolve) -> dict[str, Any]:
    """One schema for a property every kind in `variants` has: as it is where they agree; nested models merged
    key by key; enums joined; anything else any one of them (`anyOf`)."""
    first = next(iter(variants.values()))
    if all(v == first for v in variants.values()):
        return copy.deepcopy(first)
    models = {task: _deref(v, resolve) for task, v in variants.items()}
    if all("properties" in m for m in models.values()):
        merged = _merge_objects(models, resolve)
        for key in ("title", "default"):
            if key in first:
                merged[key] = first[key]
        if description := _describe(variants):
            merged["description"] = description
        return merged
    description = _describe(variants)
    if all(_shape(v) == _shape(first) for v in variants.values()):  # they differ in their descriptions only
        return {**copy.deepcopy(first), **({"description": description} if description else {})}
    outer = {k: v for k, v in first.items() if k not in ("$ref", "anyOf", "enum", "const", "type", "allOf")}
    if description:
        outer["description"] = description
    enums = [_enum_values(v, resolve) for v in variants.values()]
    if all(enums):
        values = [v for vs, _ in enums for v in vs]
        values = list(dict.fromkeys(values))
        kinds = {type(v).__name__ for v in values}
        choice = {"enum": values, **({"type": "string"} if kinds == {"str"} else {})}
        return {**outer, **({"anyOf": [choice, {"type": "null"}]} if any(n for _, n in enums) else choice)}
    distinct = []
    for v in variants.values():
        if _shape(v) not in distinct:
            distinct.append(_shape(v))
    return {**outer, "anyOf": distinct}


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    """What a property's schema accepts: all but its title, description and default."""
    return {k: v for k, v in schema.items() if k not in ("title", "description", "default")}


def _merge_objects(models: dict[str, dict[str, Any]], resolve, top: bool = False) -> dict[str, Any]:
    """One object schema for the kinds' versions of a model ({task: its object schema}): every kind's properties
    (shared first), each kind-only one marked with its kinds, required what every kind requires."""
    names: list[str] = []
    for model in models.values():
        names += [n for n in model["properties"] if n not in names]
    if not top and "task" in names:  # a section's `task` last: the config's own says it
        names = [n for n in names if n != "task"] + ["task"]
    properties = {}
    for name in names:
        have = {task: m["properties"][name] for task, m in models.items() if name in m["properties"]}
        if name == "task" and not top:  # a section's own `task`: optional, the config's task decides
            properties[name] = {"title": "Task", "type": "string", "enum": tasks(),
                                "description": "The kind this section is for; optional: the config's task."}
        elif len(have) == len(models):
            properties[name] = _merge(have, resolve)
        else:
            properties[name] = _mark(_merge(have, resolve), list(have), resolve)
        properties[name].setdefault("title", name.replace("_", " ").title())
    merged: dict[str, Any] = {"type": "object", "properties": properties}
    required = [r for r in next(iter(models.values())).get("required", [])
                if all(r in m.get("required", []) for m in models.values()) and r != "task"]
    if required:
        merged["required"] = required
    # The union of every kind's keys is listed: anything else is a key no kind has. (A shared section's own schema is
    # open, so that a kind's keys travel through it: hubflow.config._open_for_the_kinds.)
    merged["additionalProperties"] = False
    return merged


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
