"""An embedding model's monitor role: query/corpus drift in the model's own embedding space.

    observe(model_dir, facts, texts)            -> {embedding [n, dim], tokens [n]}
    signals(ref, new, ref_texts, new_texts, th) -> embedding MMD test, length and new-word drift Scores

There is no prediction to watch, and live accuracy needs relevance judgements (the kind's evaluation does that on a
labelled revision), so `accuracy` is absent: the monitor flow says so instead of scoring.
"""

from __future__ import annotations

import numpy as np

from ...monitor import signals as sig
from ...monitor.settings import Thresholds


def observe(model_dir: str, facts, texts: list[str], columns: dict | None = None) -> dict[str, np.ndarray]:
    """Texts -> the published encoder's vectors (the same ones the search index holds) and token counts."""
    from .encode import encode_texts

    vectors = encode_texts(model_dir, texts)
    tokens = np.array([len(ids) for ids in _tokenizer(model_dir)(texts)["input_ids"]], dtype=np.int64)
    return {"embedding": vectors, "tokens": tokens}


def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def signals(ref: dict, new: dict, ref_texts: list[str], new_texts: list[str], th: Thresholds) -> list[sig.Score]:
    return [*sig.embedding_drift(ref["embedding"], new["embedding"], th, "query_embedding"),
            *sig.length_drift(ref["tokens"], new["tokens"], th, "input_tokens"),
            *sig.unknown_word_drift(ref_texts, new_texts, th)]
