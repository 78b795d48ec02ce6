"""The kind seam: every registered kind fulfils the `Kind` protocol, owns its settings and facts, and a package of its
own adds a kind through the `hubflow.kinds` entry points without editing hubflow (installed into a temporary
environment with pip, then run end to end by `hubflow run`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import ValidationError

from hubflow.config import PipelineConfig, TrainConfig, load_recipe
from hubflow.kinds import Direction, all_kinds, missing_members, tasks
from hubflow.refs import ModelFacts
from tests.tiny import LABELS, push_tiny_bert, synthetic_rows

HUBFLOW = str(Path(sys.executable).with_name("hubflow"))
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", all_kinds(), ids=lambda k: k.task)
def test_every_registered_kind_fulfils_the_protocol(kind):
    assert missing_members(kind) == []
    assert issubclass(kind.settings, PipelineConfig) and get_args(kind.settings.model_fields["task"].annotation) == (
        kind.task,)
    assert issubclass(kind.facts, ModelFacts) and kind.facts.model_fields["task"].default == kind.task
    assert kind.default_metric in kind.metrics and all(isinstance(d, Direction) for d in kind.metrics.values())
    assert (kind.space_app / "app.py").is_file() and (kind.space_app / "README.md").is_file()


def test_a_recipe_carries_its_own_kinds_keys_only():
    """The whole config, a section alone (as a deployment's parameters carry it) and the facts pick the kind by
    `task`; another kind's key is refused by name."""
    chat = load_recipe(ROOT / "deployments/configs/gemma-chat.yaml")
    assert type(chat).__name__ == "CausalLMConfig" and chat.train.method.value == "lora"
    again = TrainConfig.model_validate_json(chat.train.model_dump_json())  # a trip through JSON keeps the kind's keys
    assert again == chat.train and type(again) is type(chat.train)
    with pytest.raises(ValidationError, match=r"train\.lora\n +Extra inputs are not permitted"):
        load_recipe(ROOT / "deployments/configs/demo.yaml", ["train.lora.r=8"])
    facts = ModelFacts.model_validate({"task": "text-classification", "max_length": 32, "label_names": ["a", "b"]})
    assert facts.label_names == ["a", "b"]
    with pytest.raises(ValidationError, match="label_names"):
        ModelFacts.model_validate({"task": "causal-lm", "max_length": 32, "label_names": ["a"]})


PLUGIN = '''
"""A kind from outside hubflow: support tickets sorted into queues, as a classifier under its own task name."""
from typing import Literal

from pydantic import ConfigDict, Field

from hubflow.kinds.text_classification import TextClassification
from hubflow.kinds.text_classification.settings import ClassifierConfig, ClassifierData, ClassifierFacts

TASK = "ticket-queues"


class QueueData(ClassifierData):
    task: Literal["ticket-queues"] = TASK
    label_column: str = Field("queue", description="Column naming the queue a ticket belongs in.")


class QueueConfig(ClassifierConfig):
    model_config = ConfigDict(extra="forbid", title="ticket-queues pipeline")
    task: Literal["ticket-queues"] = TASK
    data: QueueData


class QueueFacts(ClassifierFacts):
    task: Literal["ticket-queues"] = TASK


class TicketQueues(TextClassification):
    task, settings, facts = TASK, QueueConfig, QueueFacts
    modules = ("hubflow.kinds.text_classification", "hubflow_ticket_queues")
    title = "Ticket queues"

    def prepare(self, raw, model_dir, cfg, data_cfg, out_uri):
        ref = super().prepare(raw, model_dir, cfg, data_cfg, out_uri)
        return ref.model_copy(update={"facts": QueueFacts(**ref.facts.model_dump(exclude={"task"}))})


KIND = TicketQueues()
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The plugin as a package of its own, installed with pip into a folder of its own (a temporary environment on
    PYTHONPATH): hubflow is not edited, the entry point is the only link."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    (src / "hubflow_ticket_queues").mkdir(parents=True)
    (src / "hubflow_ticket_queues" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (src / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "hubflow-ticket-queues"
        version = "0.1.0"
        [project.entry-points."hubflow.kinds"]
        ticket-queues = "hubflow_ticket_queues:KIND"
        [tool.setuptools]
        packages = ["hubflow_ticket_queues"]
    '''))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--no-index", "--target", str(site), str(src)],
                   check=True, capture_output=True, timeout=300)
    return site


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HUBFLOW, *args], env=env, capture_output=True, text=True, timeout=900, cwd=cwd)


def test_an_installed_kind_runs_end_to_end(plugin_site, localhub, tmp_path):
    """`task: ticket-queues` trains, predicts and evaluates with the plugin's kind, its own settings and facts; the
    same recipe is unknown where the plugin is not installed, and another kind's key is refused by name."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=localhub.url, token=localhub.token("alice"))
    model_repo = f"alice/tiny-bert-queues-{uuid.uuid4().hex[:6]}"
    push_tiny_bert(api, model_repo, tmp_path / "bert", num_labels=3)
    data = tmp_path / "tickets"
    data.mkdir()
    for split, n, seed in (("train", 180, 3), ("test", 30, 4)):
        rows = synthetic_rows(n, seed)
        (data / f"{split}.tsv").write_text("text\tqueue\n" + "".join(f"{t}\t{LABELS[y]}\n" for t, y in rows))
    store = tmp_path / "store"
    recipe = tmp_path / "queues.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "ticket-queues", "model": {"repo_id": model_repo}, "data": {"source": str(data)},
        "preprocess": {"max_length": 32}, "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3},
        "inference": {"shard_size": 20}, "artifact_store": str(store),
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DO_NOT_TRACK"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), HF_TOKEN=localhub.token("alice"))

    unknown = _run(["run", str(recipe)], env, tmp_path)  # hubflow alone does not know the task
    assert unknown.returncode == 2 and "task='ticket-queues' has no implementation" in unknown.stderr, unknown.stderr
    env["PYTHONPATH"] = str(plugin_site)
    foreign_key = _run(["run", str(recipe), "--set", "train.method=lora"], env, tmp_path)
    assert foreign_key.returncode == 2 and "train.method: not a setting of this task" in foreign_key.stderr

    proc = _run(["run", str(recipe)], env, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (summary_file,) = (store / "runs").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["config"]["task"] == "ticket-queues" and summary["config"]["data"]["label_column"] == "queue"
    assert summary["tokenized"]["facts"]["task"] == summary["checkpoint"]["facts"]["task"] == "ticket-queues"
    model_facts = json.loads((Path(summary["checkpoint"]["uri"]) / "hubflow.json").read_text())
    assert model_facts["task"] == "ticket-queues" and model_facts["label_names"] == sorted(LABELS)
    assert summary["predictions"]["rows"] == 30 and 0.0 <= summary["evaluation"]["metrics"]["macro_f1"] <= 1.0
    assert "ticket-queues" not in tasks()  # this process never saw the plugin: nothing leaked into hubflow
