"""The promotion gate's paired bootstrap on the shared test rows: a win by one row is noise, a clear win is not."""

from __future__ import annotations

import numpy as np

from hubflow.kinds import kind_for
from hubflow.stages.gate import paired_bootstrap

CLF, LM = kind_for("text-classification"), kind_for("causal-lm")


def _rows(label: np.ndarray, correct: np.ndarray) -> dict:
    return {"label": label, "pred": np.where(correct, label, (label + 1) % 4)}


def test_a_challenger_better_by_one_row_in_400_is_within_noise():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, 400)
    champion_correct = rng.random(400) < 0.9
    challenger_correct = champion_correct.copy()
    challenger_correct[np.flatnonzero(~champion_correct)[0]] = True  # one more row right, nothing else changes
    improvement, p = paired_bootstrap(CLF, _rows(label, challenger_correct), _rows(label, champion_correct),
                                      "accuracy", 1.0)
    assert abs(improvement - 1 / 400) < 1e-9 and p > 0.05


def test_a_clear_win_is_significant_and_a_loss_is_not_a_win():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, 400)
    champion_correct = rng.random(400) < 0.80
    challenger_correct = champion_correct | (rng.random(400) < 0.5)  # fixes half of the champion's mistakes
    improvement, p = paired_bootstrap(CLF, _rows(label, challenger_correct), _rows(label, champion_correct),
                                      "macro_f1", 1.0)
    assert improvement > 0.05 and p < 0.01
    improvement, p = paired_bootstrap(CLF, _rows(label, champion_correct), _rows(label, challenger_correct),
                                      "macro_f1", 1.0)
    assert improvement < 0 and p > 0.99


def test_perplexity_is_compared_per_example_and_lower_wins():
    rng = np.random.default_rng(2)
    tokens = rng.integers(5, 30, 200)
    champion = {"nll": tokens * 2.0 + rng.normal(0, 1, 200), "tokens": tokens, "reference": [""] * 200,
                "completion": None}
    better = {**champion, "nll": champion["nll"] - tokens * 0.3}  # 0.3 nats per token better on every example
    improvement, p = paired_bootstrap(LM, better, champion, "perplexity", -1.0)
    assert improvement > 0 and p < 0.01
    same = {**champion, "nll": champion["nll"] + rng.normal(0, 0.5, 200)}  # noise around the champion
    _, p = paired_bootstrap(LM, same, champion, "perplexity", -1.0)
    assert p > 0.05
