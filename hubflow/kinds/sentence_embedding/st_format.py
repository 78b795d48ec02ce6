"""The sentence-transformers folder layout: written by hubflow's training, read by hubflow's encoder.

    save_sentence_transformer(embedder, tokenizer, folder)   -> folder: body + tokenizer at the root, modules.json,
                                                                sentence_bert_config.json, 1_Pooling/, [2_Normalize/]
    read_layout(folder)                                      -> (pooling, normalize, max_seq_length or None)

Written in the module layout every sentence-transformers release reads (`sentence_transformers.models.*` names,
one boolean per pooling mode), so `SentenceTransformer(folder)` or `SentenceTransformer("ns/model", revision=sha)`
loads the model with 2.x as well as 6.x.
"""

from __future__ import annotations

import json
from pathlib import Path

from .settings import Pooling, read_pooling

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"


def save_sentence_transformer(embedder, tokenizer, folder: str | Path) -> Path:
    """An Embedder and its tokenizer -> a sentence-transformers folder (safetensors weights); returns the folder."""
    folder = Path(folder)
    embedder.body.save_pretrained(folder)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": _TRANSFORMER},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": _POOLING}]
    if embedder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _NORMALIZE})
        # A file, not just the folder: an empty folder would not survive an upload, and 6.x reads this config.
        _write(folder / "2_Normalize" / "config.json", {})
    _write(folder / "modules.json", modules)
    # max_seq_length is the truncation the model was trained with: sentence-transformers then cuts where we cut.
    _write(folder / "sentence_bert_config.json", {"max_seq_length": embedder.max_length, "do_lower_case": False})
    dim = embedder.body.config.hidden_size
    _write(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": embedder.pooling is Pooling.cls,
        "pooling_mode_mean_tokens": embedder.pooling is Pooling.mean,
        "pooling_mode_max_tokens": embedder.pooling is Pooling.max,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    _write(folder / "config_sentence_transformers.json", {
        "__version__": _versions(), "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    return folder


def read_layout(folder: str | Path) -> tuple[Pooling, bool, int | None]:
    """A model folder -> (pooling, normalize, max_seq_length). A sentence-transformers folder says all three; a plain
    transformers folder gets mean pooling, normalised vectors and the tokenizer's own limit (None)."""
    folder = Path(folder)
    modules_path = folder / "modules.json"
    if not modules_path.exists():
        return Pooling.mean, True, None
    modules = json.loads(modules_path.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown or kinds[:1] != ["Transformer"] or modules[0].get("path", "") not in ("", "."):
        raise ValueError(f"{folder}: modules {kinds} (transformer at {modules[0].get('path')!r}); hubflow's encoder "
                         "reads a transformer at the folder's root, then Pooling and optionally Normalize")
    config_path = folder / "sentence_bert_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return read_pooling(folder) or Pooling.mean, "Normalize" in kinds, config.get("max_seq_length")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sentence_transformers", "transformers", "torch"):
        try:
            out[name if name != "torch" else "pytorch"] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            pass
    return out


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
