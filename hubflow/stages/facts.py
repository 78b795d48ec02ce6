"""A model folder's facts (`ModelFacts`: what it does, its tokens per input, its labels), with one home on disk, and
its weights' fingerprint (what caches, shard ids and cards name a model by).

hubflow writes them as `hubflow.json` next to the weights (and so publishes them with the model). A model that was
not trained by hubflow has none: it is read as a classifier, with config.json's labels and the tokenizer's limit.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TaskType
from ..doors import store
from ..refs import ModelFacts

FACTS_FILE = "hubflow.json"
DEFAULT_MAX_LENGTH = 128  # for a foreign model whose tokenizer and config name no usable limit


def write_facts(folder: str | Path, facts: ModelFacts) -> None:
    # Only what differs from the defaults: a classifier's facts do not list the causal-LM fields, and vice versa.
    Path(folder, FACTS_FILE).write_text(facts.model_dump_json(indent=2, exclude_defaults=True) + "\n")


def read_facts(folder: str | Path) -> ModelFacts:
    folder = Path(folder)
    if (folder / FACTS_FILE).exists():
        return ModelFacts.model_validate_json((folder / FACTS_FILE).read_text())
    config = json.loads((folder / "config.json").read_text())
    id2label = config.get("id2label") or {}
    tokenizer_config = folder / "tokenizer_config.json"
    limit = json.loads(tokenizer_config.read_text()).get("model_max_length") if tokenizer_config.exists() else None
    limits = [v for v in (limit, config.get("max_position_embeddings")) if isinstance(v, int) and 8 <= v <= 8192]
    return ModelFacts(task=TaskType.text_classification, max_length=min(limits) if limits else DEFAULT_MAX_LENGTH,
                      label_names=[id2label[str(i)] for i in range(len(id2label))])


def weights_fingerprint(folder: str | Path) -> str:
    """sha256 of the weights of a save_pretrained folder (model.safetensors or adapter_model.safetensors, or the
    shards in name order)."""
    folder = Path(folder)
    single = next((f for f in (folder / "model.safetensors", folder / "adapter_model.safetensors") if f.exists()), None)
    files = [single] if single else sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    return store.sha256_files(files)
