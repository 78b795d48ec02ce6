"""Drift and live-accuracy signals: arrays in, `Score`s out. Each score says its value, its threshold, which side
alarms, and whether it did; the kinds' monitors (hubflow/kinds/<kind>/monitor.py) compute the arrays and pick the
signals that fit them.

    prediction_drift(ref_pred, new_pred, classes, th)       label shares: PSI and a chi-square test
    confidence_drift(ref_top, new_top, th)                  mean top probability, share below th.low_confidence
    length_drift(ref_len, new_len, th, name)                a length distribution: KS test
    unknown_word_drift(ref_texts, new_texts, th)            words the reference never had
    embedding_drift(ref_emb, new_emb, th, name)             the model's own embeddings: MMD permutation test
    live_accuracy(y_true, y_pred, classes, card, th)        accuracy (Wilson) and macro-F1 (bootstrap) vs the card
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from . import stats
from .settings import Thresholds

Side = Literal["above", "below"]


class Score(BaseModel):
    """One monitored number; `alarm` is `value` beyond `threshold` on `alarm_when`'s side."""

    model_config = ConfigDict(frozen=True)

    name: str
    signal: Literal["drift", "degraded"]  # which event an alarm raises: hubflow.model.drift / .degraded
    value: float
    threshold: float
    alarm_when: Side
    alarm: bool
    reference: float | None = None  # the reference's value, where the score compares one
    batch: float | None = None  # the batch's value, likewise
    note: str = ""


def score(name: str, value: float, threshold: float, alarm_when: Side, signal: str = "drift", **extra) -> Score:
    alarm = value > threshold if alarm_when == "above" else value < threshold
    return Score(name=name, signal=signal, value=round(float(value), 6), threshold=threshold, alarm_when=alarm_when,
                 alarm=bool(alarm), **{k: (None if v is None else round(float(v), 6)) if k in ("reference", "batch")
                                       else v for k, v in extra.items()})


def prediction_drift(ref_pred: np.ndarray, new_pred: np.ndarray, classes: int, th: Thresholds) -> list[Score]:
    """The predicted labels' distribution: PSI (effect size) and the chi-square test's p-value."""
    ref_c = np.bincount(ref_pred, minlength=classes)
    new_c = np.bincount(new_pred, minlength=classes)
    return [score("label_psi", stats.psi(ref_c, new_c), th.psi, "above", note="predicted label shares"),
            score("label_chi2_p", stats.chi_square(ref_c, new_c), th.p_value, "below", note="chi-square test")]


def confidence_drift(ref_top: np.ndarray, new_top: np.ndarray, th: Thresholds) -> list[Score]:
    """How sure the model is: the drop of the mean top probability, the rise of the share below th.low_confidence."""
    drop = float(ref_top.mean() - new_top.mean())
    ref_low, new_low = float((ref_top < th.low_confidence).mean()), float((new_top < th.low_confidence).mean())
    return [score("confidence_drop", drop, th.confidence_drop, "above", reference=ref_top.mean(),
                  batch=new_top.mean(), note="mean top probability, reference - batch"),
            score("low_confidence_rise", new_low - ref_low, th.low_confidence_rise, "above", reference=ref_low,
                  batch=new_low, note=f"share of rows with top probability < {th.low_confidence}")]


def length_drift(ref_len: np.ndarray, new_len: np.ndarray, th: Thresholds, name: str = "length") -> list[Score]:
    """A length distribution (tokens per input, or per answer): the KS test's p-value, medians alongside."""
    _, p = stats.ks(ref_len, new_len)
    return [score(f"{name}_ks_p", p, th.p_value, "below", reference=np.median(ref_len), batch=np.median(new_len),
                  note="Kolmogorov-Smirnov test; medians in reference/batch")]


_WORD = re.compile(r"[a-z]{2,}")


def unknown_word_drift(ref_texts: list[str], new_texts: list[str], th: Thresholds) -> list[Score]:
    """Words the reference never had: the batch's share of such word tokens, minus the reference's own share of
    words seen in one reference text only (a leave-one-out estimate of how often any fresh text brings a new word).
    Numbers, ids and amounts are not words here, so order numbers do not count as new."""
    ref_words = [_WORD.findall(t.lower()) for t in ref_texts]
    df = Counter(w for words in ref_words for w in set(words))
    ref_tokens = [w for words in ref_words for w in words]
    new_tokens = [w for t in new_texts for w in _WORD.findall(t.lower())]
    ref_rate = sum(df[w] == 1 for w in ref_tokens) / max(len(ref_tokens), 1)
    new_rate = sum(w not in df for w in new_tokens) / max(len(new_tokens), 1)
    return [score("unknown_word_rise", new_rate - ref_rate, th.unknown_word_rise, "above", reference=ref_rate,
                  batch=new_rate, note="share of words the reference never had")]


def embedding_drift(ref_emb: np.ndarray, new_emb: np.ndarray, th: Thresholds, name: str = "embedding",
                    seed: int = 0) -> list[Score]:
    """A multivariate two-sample test on the model's own embeddings: MMD with a permutation p-value."""
    mmd2, p = stats.mmd_test(ref_emb, new_emb, th.permutations, seed)
    return [score(f"{name}_mmd_p", p, th.mmd_p_value, "below",
                  note=f"MMD^2 {mmd2:.4g}, {th.permutations} permutations")]


def live_accuracy(y_true: np.ndarray, y_pred: np.ndarray, classes: int, card: dict[str, float],
                  th: Thresholds) -> list[Score]:
    """Accuracy and macro-F1 on labelled new rows. Degraded when the interval's upper bound (Wilson for accuracy,
    bootstrap for macro-F1, at th.confidence_level) is below the card's figure minus th.accuracy_drop: the model is
    then worse than published, beyond both the batch's noise and the tolerance."""
    from scipy.stats import norm

    n = len(y_true)
    z = float(norm.ppf(1 - (1 - th.confidence_level) / 2))
    correct = int(np.sum(y_true == y_pred))
    out = []
    acc_lo, acc_hi = stats.wilson(correct, n, z)
    f1 = stats.macro_f1(y_true, y_pred, classes)
    f1_lo, f1_hi = stats.bootstrap(lambda i: stats.macro_f1(y_true[i], y_pred[i], classes), n,
                                   level=th.confidence_level)
    for name, value, lo, hi in (("accuracy", correct / max(n, 1), acc_lo, acc_hi), ("macro_f1", f1, f1_lo, f1_hi)):
        published = card.get(name)
        if published is None:
            continue
        out.append(score(f"live_{name}_upper", hi, published - th.accuracy_drop, "below", signal="degraded",
                         reference=published, batch=value,
                         note=f"{name} {value:.3f} on {n} labelled rows, {th.confidence_level:.0%} interval "
                              f"[{lo:.3f}, {hi:.3f}]; card {published:.3f}"))
    return out
