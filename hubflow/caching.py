"""Stage keys: one hash names both a stage's output folder in the store and its Prefect cache entry.

A key covers the stage name, the code that computes it (the source of the modules it runs) and its inputs (pinned
shas, upstream fingerprints, the stage's own config). So a rerun with nothing changed hits the cache, and changing
only the inference settings changes only the inference key (and what depends on it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import __version__


@lru_cache(maxsize=None)
def code_version(*modules: str) -> str:
    """Hash of hubflow's version and the named modules' source; a package counts with every module in it
    (`"hubflow.stages.train"` -> its file, `"hubflow.kinds.text_classification"` -> all of its .py files)."""
    h = hashlib.sha256(__version__.encode())
    for mod in modules:
        spec = importlib.util.find_spec(mod)
        if spec is None or spec.origin is None:
            raise ValueError(f"no module {mod!r} to hash for a cache key")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for file in files:
            h.update(file.name.encode() + b"\0" + file.read_bytes())
    return h.hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def stage_key(stage: str, modules: tuple[str, ...], inputs: dict[str, Any]) -> str:
    payload = json.dumps([stage, code_version(*modules), _jsonable(inputs)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]
