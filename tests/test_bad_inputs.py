"""The bad-input catalogue: each case is something a careless or hostile user does, and what they must get back —
one line that names the field or value, the exit status (2 for a bad recipe, from the CLI), no traceback, nothing
written or published. Table-driven; docs/reliability.md lists the cases and their results.

Other catalogues of the same kind: tests/test_pipeline.py (preflight through a real run), tests/test_webhooks.py
(the receiver), tests/test_localhub_security.py (localhub's HTTP surface and Spaces).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from hubflow.kinds import kind_for

ROOT = Path(__file__).resolve().parent.parent
HUBFLOW = str(Path(sys.executable).with_name("hubflow"))
DEMO = str(ROOT / "deployments" / "configs" / "demo.yaml")
CHAT = str(ROOT / "deployments" / "configs" / "qwen-chat-lora.yaml")

# (name, recipe, --set overrides, text the one-line message must hold)
RECIPES = [
    ("negative learning rate", DEMO, ["train.learning_rate=-1"], "train.learning_rate"),
    ("misspelt key", DEMO, ["train.epoch=3"], "train.epoch: not a setting of this task"),
    ("three-part repo id", DEMO, ["model.repo_id=a/b/c"], "model.repo_id='a/b/c' is not a Hub repo id"),
    ("max_length below 8", DEMO, ["preprocess.max_length=4"], "preprocess.max_length"),
    ("fp16 without a GPU", DEMO, ["train.precision=fp16"], "train.precision=fp16 needs a CUDA GPU"),
    ("qlora without a GPU", CHAT, ["train.method=qlora"], "train.method=qlora needs a CUDA GPU"),
    ("unknown task", DEMO, ["task=summarization"], "task='summarization' has no implementation; known: "),
    ("an LM metric on a classifier", DEMO, ["publish.gate.metric=perplexity"],
     "publish.gate.metric: Input should be 'accuracy' or 'macro_f1'"),
    ("a classifier metric on an LM", CHAT, ["publish.gate.metric=accuracy"],
     "publish.gate.metric: Input should be 'perplexity'"),
    ("an adapter of a full fine-tune", CHAT, ["train.method=full", "publish.format=adapter"],
     "publish.format='adapter' needs train.method lora"),
    ("LoRA on a classifier", DEMO, ["train.method=lora"], "train.method: not a setting of this task"),
    ("generation settings on a classifier", DEMO, ["inference.generation.max_new_tokens=8"],
     "inference.generation: not a setting of this task"),
    ("a label column on a causal LM", CHAT, ["data.label_column=y"], "data.label_column: not a setting of this task"),
    ("unknown Space hardware", DEMO, ["space.hardware=gpu-giant"],
     "space.hardware='gpu-giant' is not a Space hardware flavour"),
    ("pools with a local store", DEMO, ["execution.mode=pools"], "needs a shared artifact_store"),
    ("unknown file format", DEMO, ["data.format=xlsx"], "data.format: Input should be"),
    ("unknown data shape", CHAT, ["data.shape=tabular"], "data.shape: Input should be"),
    ("LoRA rank 0", CHAT, ["train.lora.r=0"], "train.lora.r"),
    ("temperature 0", CHAT, ["inference.generation.temperature=0"], "inference.generation.temperature"),
    ("beam search", CHAT, ["inference.generation.decoding=beam"], "inference.generation.decoding"),
    ("unknown review mode", DEMO, ["publish.review=maybe"], "publish.review: Input should be"),
    ("confidence above 1", DEMO, ["publish.gate.confidence=1.5"], "publish.gate.confidence"),
    ("unknown gate mode", DEMO, ["publish.gate.mode=strict"], "publish.gate.mode: Input should be"),
    ("Space id with a dot-dot", DEMO, ["space.space_id=../x"], "space.space_id='../x' is not a Hub repo id"),
    ("three-part publish repo", DEMO, ["publish.repo_id=a/b/c"], "publish.repo_id='a/b/c' is not a Hub repo id"),
    # The Hub client's own rule (validate_repo_id): each of these would fail at publish time, after training.
    ("dot-dot in the publish repo", DEMO, ["publish.repo_id=demo/a..b"],
     "publish.repo_id='demo/a..b' is not a Hub repo id (Cannot have -- or .. in repo_id)"),
    ("predictions repo ending in a dash", DEMO, ["publish.predictions_repo_id=demo/preds-"],
     "publish.predictions_repo_id='demo/preds-' is not a Hub repo id"),
    ("double dash in the Space id", DEMO, ["space.space_id=demo/x--y"],
     "space.space_id='demo/x--y' is not a Hub repo id"),
    ("a 97-character model name", DEMO, [f"publish.repo_id=demo/{'m' * 97}"], "is not a Hub repo id"),
    ("batch size 0", DEMO, ["train.batch_size=0"], "train.batch_size"),
    ("no samples", DEMO, ["data.max_train_samples=0"], "data.max_train_samples"),
    ("override without =", DEMO, ["train"], "--set 'train': expected key.sub=value"),
    ("override without a key", DEMO, ["=3"], "--set '=3': expected key.sub=value"),
    ("override that is not YAML", DEMO, ["train.epochs=[1"], "the value is not valid YAML"),
    ("override into a value", DEMO, ["model.repo_id.x=1"], "'repo_id' is a value, not a section"),
    ("max_new_tokens 0", CHAT, ["inference.generation.max_new_tokens=0"], "inference.generation.max_new_tokens"),
    ("negative margin", DEMO, ["publish.gate.min_improvement=-0.1"], "publish.gate.min_improvement"),
    ("int8 inference for a causal LM", CHAT, ["inference.precision=int8"],
     "inference.precision=int8 is for text-classification; causal-lm predicts in auto or fp32"),
    ("unknown inference precision", DEMO, ["inference.precision=int4"], "inference.precision: Input should be"),
]


@pytest.mark.parametrize("name, recipe, overrides, message", RECIPES, ids=[r[0] for r in RECIPES])
def test_a_bad_recipe_is_one_line_and_exit_2(name, recipe, overrides, message):
    args = [HUBFLOW, "run", recipe] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0] and lines[0].startswith(f"hubflow: {recipe}: "), lines[0]


@pytest.mark.parametrize("content, message", [
    (None, "No such file"),
    (": : :\n- [", "not valid YAML"),
    ("- a\n- b\n", "a recipe is a YAML mapping of settings, not a list"),
], ids=["missing file", "not YAML", "a list"])
def test_a_recipe_file_that_is_not_a_recipe(tmp_path, content, message):
    recipe = tmp_path / "recipe.yaml"
    if content is not None:
        recipe.write_text(content)
    proc = subprocess.run([HUBFLOW, "run", str(recipe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr


# ---- the library's preflight: before any stage that costs, naming the field -----------------------------------

def _llama(tmp_path, chat=True):
    from tests.tiny import TINY_CHAT_TEMPLATE, make_tiny_llama

    return make_tiny_llama(tmp_path / ("chat" if chat else "plain"), chat_template=TINY_CHAT_TEMPLATE if chat else None)


def _chat(n=20):
    from tests.tiny import chat_rows

    return chat_rows(n, 0)


def _lm_prepare(tmp_path, rows, model, **pre):
    from hubflow.config import DataConfig, PreprocessConfig
    from hubflow.kinds import kind_for
    from hubflow.stages import pull

    kind, data = kind_for("causal-lm"), DataConfig(source="x")
    raw = pull.write_raw_splits(DatasetDict(train=Dataset.from_list(rows)), data, kind, str(tmp_path / "raw"), "x",
                                None)
    return kind.prepare(raw, str(model), PreprocessConfig(**{"max_length": 96, **pre}), data, str(tmp_path / "tok"))


def _clf_pull(tmp_path, splits: dict, **data):
    from hubflow.config import DataConfig
    from hubflow.kinds import kind_for
    from hubflow.stages import pull

    dsd = DatasetDict({s: Dataset.from_dict(cols) for s, cols in splits.items()})
    data = DataConfig(task="text-classification", source="x", **data)
    return pull.write_raw_splits(dsd, data, kind_for("text-classification"), str(tmp_path / "raw"), "x", None)


def case_no_chat_template(tmp_path):
    _lm_prepare(tmp_path, _chat(), _llama(tmp_path, chat=False))


def case_prompt_longer_than_max_length(tmp_path):
    _lm_prepare(tmp_path, _chat(), _llama(tmp_path), max_length=16)


def case_max_length_past_the_positions(tmp_path):
    _lm_prepare(tmp_path, _chat(), _llama(tmp_path), max_length=4096)


def case_missing_messages_column(tmp_path):
    _lm_prepare(tmp_path, [{"conversation": r["messages"]} for r in _chat()], _llama(tmp_path))


def case_a_turn_without_content(tmp_path):
    rows = _chat()
    rows[3] = {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}
    _lm_prepare(tmp_path, rows, _llama(tmp_path))


def case_label_only_in_test(tmp_path):
    _clf_pull(tmp_path, {"train": {"text": ["a", "b", "c", "d"], "label": ["x", "y", "x", "y"]},
                         "test": {"text": ["e", "f"], "label": ["x", "z"]}})


def case_text_and_label_are_one_column(tmp_path):
    _clf_pull(tmp_path, {"train": {"text": ["a", "b"], "label": ["x", "y"]}}, label_column="text")


def case_missing_label_column(tmp_path):
    _clf_pull(tmp_path, {"train": {"text": ["a", "b"], "topic": ["x", "y"]}})


def case_classifier_max_length_past_positions(tmp_path):
    from hubflow.config import DataConfig, PreprocessConfig
    from hubflow.kinds import kind_for
    from tests.tiny import make_tiny_bert

    raw = _clf_pull(tmp_path, {"train": {"text": [f"t {i}" for i in range(20)], "label": ["x", "y"] * 10}})
    kind_for("text-classification").prepare(raw, str(make_tiny_bert(tmp_path / "bert")),
                                             PreprocessConfig(max_length=4096), DataConfig(source="x"),
                                             str(tmp_path / "tok"))


def case_folder_of_unreadable_files(tmp_path):
    from hubflow.config import DataConfig
    from hubflow.kinds import kind_for
    from hubflow.stages import pull

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.xlsx").write_bytes(b"PK")
    pull.load_raw_files(str(tmp_path / "src"), DataConfig(source=str(tmp_path / "src")),
                        kind_for("text-classification"), str(tmp_path / "raw"))


def case_memory_budget_too_small(tmp_path):
    import os

    from hubflow.config import TrainConfig
    from hubflow.stages.memory import check_memory

    os.environ["HUBFLOW_DEVICE_MEMORY"] = "1MB"
    try:
        check_memory(str(_llama(tmp_path)), TrainConfig(batch_size=64), 512, None, kind_for("causal-lm"))
    finally:
        os.environ.pop("HUBFLOW_DEVICE_MEMORY")


def case_memory_budget_not_a_size(tmp_path):
    import os

    from hubflow.config import TrainConfig
    from hubflow.stages.memory import check_memory

    os.environ["HUBFLOW_DEVICE_MEMORY"] = "lots"
    try:
        check_memory(str(_llama(tmp_path)), TrainConfig(), 64, None, kind_for("causal-lm"))
    finally:
        os.environ.pop("HUBFLOW_DEVICE_MEMORY")


PREFLIGHT = [
    (case_no_chat_template, "preprocess.chat_template"),
    (case_prompt_longer_than_max_length, "preprocess.max_length=16: the prompt of row"),
    (case_max_length_past_the_positions, "preprocess.max_length=4096 is more than the model's 128 positions"),
    (case_missing_messages_column, "no 'messages' column (chat)"),
    (case_a_turn_without_content, "split 'train', row 3: a turn must be {role"),
    (case_label_only_in_test, "split 'test' holds ['z'] (1 rows), which split 'train' never has"),
    (case_text_and_label_are_one_column, "data.text_column and data.label_column are both 'text'"),
    (case_missing_label_column, "label column 'label' not found in split 'train'"),
    (case_classifier_max_length_past_positions, "preprocess.max_length=4096 is more than the model's 128 positions"),
    (case_folder_of_unreadable_files, "(extensions .xlsx)"),
    (case_memory_budget_too_small, "HUBFLOW_DEVICE_MEMORY has 1.0 MiB; lower train.batch_size"),
    (case_memory_budget_not_a_size, "HUBFLOW_DEVICE_MEMORY='lots' is not a size"),
]


@pytest.mark.parametrize("case, message", PREFLIGHT, ids=[c.__name__.removeprefix("case_") for c, _ in PREFLIGHT])
def test_bad_input_fails_the_preflight_with_one_line(case, message, tmp_path):
    with pytest.raises(ValueError) as err:  # PreflightError is a ValueError
        case(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "tok").exists() or not any((tmp_path / "tok").iterdir())  # nothing prepared


# ---- release targets: the token must be able to write every repo a run publishes -------------------------------

@pytest.mark.parametrize("user, targets, message", [
    ("reader", {"publish.repo_id": "reader/model"}, "publish.repo_id='reader/model': the token is read-only"),
    ("alice", {"publish.repo_id": "alice/m", "publish.predictions_repo_id": "bob/preds"},
     "publish.predictions_repo_id='bob/preds': the token's user 'alice' cannot write the namespace 'bob'"),
    ("alice", {"space.space_id": "hubflow/demo-space"}, "space.space_id='hubflow/demo-space'"),
    (None, {"publish.repo_id": "alice/m"}, "publish.enabled: publishing needs a Hub token"),
], ids=["read-only token", "foreign predictions namespace", "foreign Space namespace", "no token"])
def test_release_targets_are_checked_before_anything_runs(localhub, monkeypatch, user, targets, message):
    from hubflow.doors import hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    if user:
        monkeypatch.setenv("HF_TOKEN", localhub.token(user))
    with pytest.raises(ValueError) as err:
        hub.check_can_write(targets)
    assert message in str(err.value)


LONG = "m" * 92  # a valid name; with "-predictions" or "-demo" after it, past the Hub's 96 characters


@pytest.mark.parametrize("publish, space, message", [
    ({"repo_id": LONG}, {}, f"publish.predictions_repo_id='alice/{LONG}-predictions' is not a Hub repo id"),
    ({"repo_id": LONG, "predictions_repo_id": "alice/preds"}, {"enabled": True},
     f"space.space_id='alice/{LONG}-demo' is not a Hub repo id"),
], ids=["derived predictions repo", "derived Space"])
def test_a_derived_release_target_the_hub_would_refuse_is_named(localhub, monkeypatch, publish, space, message):
    from hubflow.config import PublishConfig, SpaceConfig
    from hubflow.stages.publish import release_targets

    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    with pytest.raises(ValueError) as err:
        release_targets("alice/base", "alice/data", PublishConfig(**publish), SpaceConfig(**space))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("base, source", [
    ("org/bert-base-", "./data/tickets--v2./"), ("org/Model", "/srv/my data (2024)"), ("org/" + "b" * 90, "org/d"),
], ids=["dashes and dots", "spaces and brackets", "long names"])
def test_default_release_targets_are_names_the_hub_accepts(localhub, monkeypatch, base, source):
    from huggingface_hub.utils import validate_repo_id

    from hubflow.config import PublishConfig, SpaceConfig
    from hubflow.stages.publish import release_targets

    monkeypatch.setenv("HF_TOKEN", localhub.token("alice"))
    targets = release_targets(base, source, PublishConfig(), SpaceConfig(enabled=True))
    assert list(targets) == ["publish.repo_id", "publish.predictions_repo_id", "space.space_id"]
    for repo_id in targets.values():
        validate_repo_id(repo_id)  # raises for an id the client would refuse
        assert repo_id.startswith("alice/")
