"""The shared statistics of drift monitoring: plain numpy + scipy, no model, no I/O.

    psi(ref_counts, new_counts)                  population stability index of two categorical distributions
    chi_square(ref_counts, new_counts)           p-value of a 2xK contingency test (same distribution?)
    ks(ref, new)                                 two-sample Kolmogorov-Smirnov: (statistic, p-value)
    mmd_test(ref, new, permutations, seed)       kernel two-sample test on vectors: (MMD^2, permutation p-value)
    wilson(successes, n, z)                      Wilson score interval of a proportion
    bootstrap(fn, n, draws, seed)                percentile interval of a statistic over row resamples

Why scipy and our own MMD rather than Evidently or Alibi Detect: the tests needed are a handful of lines each, scipy
is already a dependency of the stack, and both libraries pull in a large tree (Evidently: pandas + plotly + its own
UI stack; Alibi Detect: TensorFlow or a pinned PyTorch) for what is here ~100 lines that the tests pin down.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_EPS = 1e-4  # a class absent on one side would make PSI infinite: floor the shares, as PSI tables usually do


def shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / max(counts.sum(), 1.0)
    p = np.maximum(p, _EPS)
    return p / p.sum()


def psi(ref_counts, new_counts) -> float:
    """sum (new - ref) * ln(new / ref) over the categories; 0 = same, > 0.1 moderate, > 0.2 a large shift."""
    p, q = shares(ref_counts), shares(new_counts)
    return float(np.sum((q - p) * np.log(q / p)))


def chi_square(ref_counts, new_counts) -> float:
    """p-value that both count vectors come from one categorical distribution (categories empty on both sides are
    dropped; a single category left means nothing to test: 1.0)."""
    from scipy.stats import chi2_contingency

    table = np.vstack([np.asarray(ref_counts, float), np.asarray(new_counts, float)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def ks(ref, new) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov on 1-d samples: (max CDF gap, p-value)."""
    from scipy.stats import ks_2samp

    res = ks_2samp(np.asarray(ref, float), np.asarray(new, float))
    return float(res.statistic), float(res.pvalue)


def mmd_test(ref: np.ndarray, new: np.ndarray, permutations: int = 500, seed: int = 0) -> tuple[float, float]:
    """Maximum mean discrepancy with a Gaussian kernel (bandwidth: the median pairwise distance of the pooled sample)
    and its permutation p-value: the share of random relabellings of the pooled rows whose MMD^2 is at least the
    observed one. Under no drift p is uniform, so `p < alpha` alarms falsely at rate alpha (the stated rate);
    the smallest p reachable is 1 / (permutations + 1). Cost: one n x n kernel, then O(n^2) per permutation."""
    x = np.vstack([np.asarray(ref, np.float64), np.asarray(new, np.float64)])
    m = len(ref)
    sq = np.einsum("ij,ij->i", x, x)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    off = d2[np.triu_indices(len(x), k=1)]
    width = np.median(off) if off.size else 1.0
    k = np.exp(-d2 / max(width, 1e-12))
    observed = _mmd2(k, np.arange(len(x)) < m)
    rng = np.random.default_rng(seed)
    mask = np.arange(len(x)) < m
    hits = sum(_mmd2(k, rng.permutation(mask)) >= observed for _ in range(permutations))
    return float(observed), float((hits + 1) / (permutations + 1))


def _mmd2(k: np.ndarray, in_ref: np.ndarray) -> float:
    """The biased MMD^2 estimate for one split of the pooled kernel matrix."""
    a, b = in_ref, ~in_ref
    return float(k[np.ix_(a, a)].mean() + k[np.ix_(b, b)].mean() - 2.0 * k[np.ix_(a, b)].mean())


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of successes / n (z = 1.96: 95%); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap(fn: Callable[[np.ndarray], float], n: int, draws: int = 500, level: float = 0.95,
              seed: int = 0) -> tuple[float, float]:
    """Percentile interval of `fn(row indices)` over `draws` resamples of n rows with replacement."""
    rng = np.random.default_rng(seed)
    values = np.array([fn(rng.integers(0, n, n)) for _ in range(draws)])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> float:
    """Unweighted mean of the per-class F1 over the classes present in truth or prediction."""
    scores = []
    for c in range(classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0
