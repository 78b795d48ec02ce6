"""A model folder's facts (`ModelFacts`: what it does, its tokens per input, its labels), with one home on disk, and
its weights' fingerprint (what caches, shard ids and cards name a model by).

hubflow writes them as `hubflow.json` next to the weights (and so publishes them with the model). A model that was
not trained by hubflow has none: the kinds are asked in turn (the default kind last) which claims it, with the
tokenizer's or the positions' limit.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..doors import store
from ..kinds import DEFAULT_TASK, all_kinds
from ..refs import ModelFacts

FACTS_FILE = "hubflow.json"
DEFAULT_MAX_LENGTH = 128  # for a foreign model whose tokenizer and config name no usable limit


def write_facts(folder: str | Path, facts: ModelFacts) -> None:
    # Only what differs from the defaults: a classifier's facts do not list the causal-LM fields, and vice versa.
    # `task` always: it picks the kind's facts class when read back.
    record = {"task": facts.task, **facts.model_dump(mode="json", exclude_defaults=True)}
    Path(folder, FACTS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_facts(folder: str | Path) -> ModelFacts:
    folder = Path(folder)
    if (folder / FACTS_FILE).exists():
        return ModelFacts.model_validate_json((folder / FACTS_FILE).read_text())
    config = json.loads((folder / "config.json").read_text())
    tokenizer_config = folder / "tokenizer_config.json"
    limit = json.loads(tokenizer_config.read_text()).get("model_max_length") if tokenizer_config.exists() else None
    limits = [v for v in (limit, config.get("max_position_embeddings")) if isinstance(v, int) and 8 <= v <= 8192]
    max_length = min(limits) if limits else DEFAULT_MAX_LENGTH
    for kind in sorted(all_kinds(), key=lambda k: k.task == DEFAULT_TASK):
        facts = kind.foreign_facts(folder, config)
        if facts is not None:
            return facts.model_copy(update={"max_length": max_length})
    raise ValueError(f"{folder}: no task kind can serve this model (no {FACTS_FILE}, and no kind claims it)")


def weights_fingerprint(folder: str | Path) -> str:
    """sha256 of the weights of a save_pretrained folder (model.safetensors or adapter_model.safetensors, or the
    shards in name order)."""
    folder = Path(folder)
    single = next((f for f in (folder / "model.safetensors", folder / "adapter_model.safetensors") if f.exists()), None)
    files = [single] if single else sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    return store.sha256_files(files)
