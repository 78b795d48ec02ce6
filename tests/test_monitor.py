"""The monitor's signals on constructed data: each catches a shift made to be caught and stays quiet on an
unshifted sample; then the kinds' monitor roles on tiny models (a BERT classifier, a Llama) and the demo tickets."""

from __future__ import annotations

import numpy as np
import pytest

from hubflow.monitor import signals as sig
from hubflow.monitor import stats
from hubflow.monitor.settings import Thresholds

TH = Thresholds()


def _labels(rng, shares, n):
    return rng.choice(len(shares), size=n, p=shares)


def test_prediction_drift_catches_a_label_mix_change_and_not_a_resample():
    rng = np.random.default_rng(0)
    base = [0.2, 0.3, 0.28, 0.22]
    ref = _labels(rng, base, 400)
    same = {s.name: s for s in sig.prediction_drift(ref, _labels(rng, base, 400), 4, TH)}
    moved = {s.name: s for s in sig.prediction_drift(ref, _labels(rng, [0.1, 0.2, 0.15, 0.55], 400), 4, TH)}
    assert not any(s.alarm for s in same.values()), same
    assert moved["label_psi"].alarm and moved["label_psi"].value > 0.2
    assert moved["label_chi2_p"].alarm and moved["label_chi2_p"].value < 1e-6


def test_psi_is_finite_when_a_class_vanishes():
    assert np.isfinite(stats.psi([100, 100, 0], [0, 100, 100])) and stats.psi([5, 5], [5, 5]) == 0


def test_confidence_drift_catches_a_less_sure_model():
    rng = np.random.default_rng(1)
    ref = rng.beta(20, 1.5, 400)
    assert not any(s.alarm for s in sig.confidence_drift(ref, rng.beta(20, 1.5, 400), TH))
    unsure = np.concatenate([rng.beta(20, 1.5, 300), rng.uniform(0.3, 0.55, 100)])
    got = {s.name: s for s in sig.confidence_drift(ref, unsure, TH)}
    assert got["confidence_drop"].alarm and got["low_confidence_rise"].alarm
    assert got["confidence_drop"].reference > got["confidence_drop"].batch


def test_length_drift_catches_longer_inputs():
    rng = np.random.default_rng(2)
    ref = rng.poisson(25, 400)
    assert not sig.length_drift(ref, rng.poisson(25, 400), TH)[0].alarm
    (moved,) = sig.length_drift(ref, rng.poisson(45, 400), TH)
    assert moved.alarm and moved.batch > moved.reference


def test_unknown_words_catch_a_new_vocabulary_and_not_fresh_tickets():
    from hubflow.demo_data import ticket_batch

    ref = [t for t, _ in ticket_batch(400, seed=100)]
    fresh = [t for t, _ in ticket_batch(400, seed=101)]
    shifted = [t for t, _ in ticket_batch(400, seed=102, shift=0.3)]
    (quiet,) = sig.unknown_word_drift(ref, fresh, TH)
    (loud,) = sig.unknown_word_drift(ref, shifted, TH)
    assert not quiet.alarm, quiet
    assert loud.alarm and loud.value > quiet.value, loud


def test_mmd_catches_a_shifted_cluster_and_its_false_alarm_rate_is_its_level():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(200, 16))
    shifted = np.vstack([rng.normal(size=(160, 16)), rng.normal(loc=1.0, size=(40, 16))])  # 20% of rows moved
    assert sig.embedding_drift(ref, shifted, TH)[0].alarm
    # Under no drift the permutation p-value is uniform: at alpha = 0.05, about 5% of 30 unshifted samples alarm.
    ref = ref[:100]
    p = [stats.mmd_test(ref, rng.normal(size=(100, 16)), 99, seed=i)[1] for i in range(30)]
    assert sum(x < 0.05 for x in p) <= 5 and min(p) >= 0.01  # the p-values are spread, not piled near 0
    assert max(p) > 0.5


def test_live_accuracy_flags_a_model_worse_than_its_card_and_not_an_equal_one():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 400)
    as_good = np.where(rng.random(400) < 0.93, y, (y + 1) % 4)
    worse = np.where(rng.random(400) < 0.75, y, (y + 1) % 4)
    card = {"accuracy": 0.93, "macro_f1": 0.93}
    assert not any(s.alarm for s in sig.live_accuracy(y, as_good, 4, card, TH))
    got = {s.name: s for s in sig.live_accuracy(y, worse, 4, card, TH)}
    assert got["live_accuracy_upper"].alarm and got["live_macro_f1_upper"].alarm
    assert got["live_accuracy_upper"].signal == "degraded" and got["live_accuracy_upper"].batch < 0.8
    lo, hi = stats.wilson(372, 400)
    assert lo < 0.93 < hi and hi - lo < 0.06


def test_every_kind_has_a_monitor_role():
    from hubflow.kinds import all_kinds

    for kind in all_kinds():
        assert kind.monitor is not None and hasattr(kind.monitor, "observe") and hasattr(kind.monitor, "signals")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from hubflow.kinds.text_classification.settings import ClassifierFacts
    from tests.tiny import make_tiny_bert

    folder = make_tiny_bert(tmp_path_factory.mktemp("bert"), num_labels=3)
    return str(folder), ClassifierFacts(task="text-classification", max_length=64, label_names=["a", "b", "c"])


def test_classifier_monitor_scores_a_batch_and_its_labels(tiny_bert):
    from hubflow.kinds import kind_for
    from hubflow.monitor.assess import Rows, assess
    from tests.tiny import synthetic_rows

    folder, facts = tiny_bert
    ref = synthetic_rows(120, seed=1)
    new = synthetic_rows(120, seed=2)
    monitor = kind_for("text-classification").monitor
    report = assess(monitor, folder, facts, Rows(texts=[t for t, _ in ref]),
                    Rows(texts=[t for t, _ in new], labels=[lab for _, lab in new]), {"accuracy": 0.99}, TH)
    names = {s.name for s in report.scores}
    assert {"label_psi", "confidence_drop", "input_tokens_ks_p", "embedding_mmd_p", "live_accuracy_upper"} <= names
    assert report.degraded  # an untrained model is far below a card's 0.99
    assert len(report.plots["batch_labels"]) == 3
    small = assess(monitor, folder, facts, Rows(texts=[t for t, _ in ref]), Rows(texts=["x"] * 5), {}, TH)
    assert not small.scores and "too few rows" in small.note


def test_causal_lm_monitor_finds_prompts_it_finds_surprising(tmp_path):
    from hubflow.kinds import kind_for
    from hubflow.refs import ModelFacts
    from tests.tiny import TINY_CHAT_TEMPLATE, make_tiny_llama, pretrain_tiny_llama, synthetic_rows

    folder = make_tiny_llama(tmp_path / "llama", hidden=64, chat_template=TINY_CHAT_TEMPLATE)
    pretrain_tiny_llama(folder, steps=12)
    facts = ModelFacts(task="causal-lm", max_length=64)
    monitor = kind_for("causal-lm").monitor
    ref = [t for t, _ in synthetic_rows(80, 1)]
    rng = np.random.default_rng(0)
    noise = ["".join(chr(c) for c in rng.integers(0x3b1, 0x3c9, 30)) for _ in range(80)]  # Greek letters
    cols = {"answer_tokens": [5] * 80, "finish_reason": ["eos"] * 80}
    r_obs = monitor.observe(str(folder), facts, ref, cols)
    same = monitor.signals(r_obs, monitor.observe(str(folder), facts, [t for t, _ in synthetic_rows(80, 2)], cols),
                           ref, ref, TH)
    moved = monitor.signals(r_obs, monitor.observe(str(folder), facts, noise, {"answer_tokens": [40] * 80,
                            "finish_reason": ["length"] * 80}), ref, noise, TH)
    assert not {s.name: s for s in same}["prompt_perplexity_ratio"].alarm
    got = {s.name: s for s in moved}
    assert got["prompt_perplexity_ratio"].alarm and got["truncated_rise"].alarm and got["answer_tokens_ks_p"].alarm
