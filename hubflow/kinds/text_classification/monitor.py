"""A classifier's monitor role: what it sees and says about a batch of texts, against its reference.

    observe(model_dir, facts, texts[, columns]) -> {probs [n, classes], embedding [n, hidden], tokens [n]}
    signals(ref, new, ref_texts, new_texts, th) -> prediction, confidence and input drift Scores
    accuracy(new, labels, facts, card, th)      -> live accuracy Scores (labels: names or ids)

One forward pass per row gives everything: the class probabilities and the mean-pooled last hidden state (the
model's own embedding of the input, what its head reads), so input drift is measured in the space the model decides
in, not in some other encoder's.
"""

from __future__ import annotations

import functools

import numpy as np

from ...monitor import signals as sig
from ...monitor.settings import Thresholds


@functools.lru_cache(maxsize=2)
def _load(model_dir: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def observe(model_dir: str, facts, texts: list[str], columns: dict | None = None,
            batch_size: int = 64) -> dict[str, np.ndarray]:
    """Texts -> per-row probabilities, embeddings and untruncated token counts (length-sorted batches, CPU);
    `columns` (the rows' other columns) are not needed by a classifier."""
    import torch

    model, tok = _load(str(model_dir))
    tokens = np.array([len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]], dtype=np.int64)
    order = np.argsort(-tokens, kind="stable")
    probs, embs = [None] * len(texts), [None] * len(texts)
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            enc = tok([texts[j] for j in idx], truncation=True, max_length=facts.max_length, padding=True,
                      return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)
            for j, p, e in zip(idx, out.logits.float().softmax(-1).numpy(), pooled.float().numpy()):
                probs[j], embs[j] = p, e
    n_cls = len(getattr(facts, "label_names", []) or []) or model.config.num_labels
    return {"probs": np.array(probs).reshape(len(texts), n_cls), "embedding": np.array(embs), "tokens": tokens}


def signals(ref: dict, new: dict, ref_texts: list[str], new_texts: list[str], th: Thresholds) -> list[sig.Score]:
    """Prediction drift (labels), confidence drift (top probability), input drift (length, new words, embeddings)."""
    classes = ref["probs"].shape[1]
    ref_top, new_top = ref["probs"].max(1), new["probs"].max(1)
    return [
        *sig.prediction_drift(ref["probs"].argmax(1), new["probs"].argmax(1), classes, th),
        *sig.confidence_drift(ref_top, new_top, th),
        *sig.length_drift(ref["tokens"], new["tokens"], th, "input_tokens"),
        *sig.unknown_word_drift(ref_texts, new_texts, th),
        *sig.embedding_drift(ref["embedding"], new["embedding"], th),
    ]


def accuracy(new: dict, labels: list, facts, card: dict[str, float], th: Thresholds) -> list[sig.Score]:
    """Live accuracy and macro-F1 of the batch's predictions against its labels (class names or ids)."""
    names = list(getattr(facts, "label_names", []) or [])
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(x) for x in labels if not isinstance(x, (int, np.integer)) and x not in index})
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not the model's classes {names}")
    y_true = np.array([int(x) if isinstance(x, (int, np.integer)) else index[x] for x in labels])
    return sig.live_accuracy(y_true, new["probs"].argmax(1), new["probs"].shape[1], card, th)


def label_shares(obs: dict) -> np.ndarray:
    """The predicted labels' shares (for the report's plot)."""
    classes = obs["probs"].shape[1]
    return np.bincount(obs["probs"].argmax(1), minlength=classes) / max(len(obs["probs"]), 1)
