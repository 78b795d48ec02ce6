"""The promotion gate: may this run's model replace the one published at the target repo (champion/challenger)?

PipelineResult + PublishConfig -> GateDecision (+ the champion's metrics, for the comparison report).
`gate.mode` off: every run is promoted. threshold: the challenger's test metric must reach the threshold.
champion: it must also beat the model at the target repo's head, scored here on the challenger's own test rows
(same texts, references and max length), by at least `min_improvement`, and a paired bootstrap over those rows
must be `confidence` sure that it is better: a challenger better by one row in four hundred is noise, not a win.
Which way is better comes from the task kind (`Direction`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import GateMode, PublishConfig
from ..doors import hub
from ..kinds import Direction, kind_for
from ..refs import GateDecision, PinnedRepo, PipelineResult
from .predict import read_predictions
from .publish import target_repos


def decide_promotion(result: PipelineResult, cfg: PublishConfig, repo_id: str | None = None) -> GateDecision:
    return judge(result, cfg, repo_id)[0]


def judge(result: PipelineResult, cfg: PublishConfig, repo_id: str | None = None) -> tuple[GateDecision, dict | None]:
    """The decision, plus the champion's metrics (None when it was not scored), for the comparison report."""
    gate, facts = cfg.gate, result.checkpoint.facts
    kind = kind_for(facts.task)
    metric = getattr(gate.metric, "value", gate.metric) or kind.default_metric  # a kind's enum, or a name
    mine = result.evaluation.metrics
    better = _better(kind.metrics.get(metric, Direction.higher))

    def decision(promoted: bool, reason: str, champion: dict | None = None, sha: str | None = None,
                 **stats) -> GateDecision:
        return GateDecision(promoted=promoted, metric=metric, challenger=mine[metric],
                            champion=champion[metric] if champion else None, champion_sha=sha,
                            threshold=gate.threshold, reason=reason, **stats)

    if gate.mode is GateMode.off:
        return decision(True, "gate off: every run is published"), None
    if not (mine[metric] == gate.threshold or better(mine[metric], gate.threshold)):
        return decision(False, f"{metric} {mine[metric]:.4f} is below the threshold {gate.threshold:.4f}"), None
    if gate.mode is GateMode.threshold:
        return decision(True, f"{metric} {mine[metric]:.4f} reaches the threshold {gate.threshold:.4f}"), None
    repo_id = repo_id or target_repos(result, cfg)[0]
    found = find_champion(repo_id)
    if found is None:
        return decision(True, f"no model at {repo_id} yet; {metric} reaches the threshold"), None
    champion, weights = found
    if weights == result.checkpoint.fingerprint:
        return decision(True, f"{repo_id}@{champion.sha[:10]} already is this model", mine, champion.sha), dict(mine)
    table = read_predictions(result.predictions)
    own = kind.own_rows(table)
    other = kind.champion_rows(hub.model_dir(champion), table, facts, result.config.inference, metric)
    everything = np.arange(len(other["reference" if "reference" in other else "label"]))
    theirs = {name: kind.metric(other, name, everything) for name in kind.metrics if name in mine}
    sign = 1.0 if kind.metrics[metric] is Direction.higher else -1.0
    improvement, p_value = paired_bootstrap(kind, own, other, metric, sign)
    stats = dict(improvement=improvement, p_value=p_value, min_improvement=gate.min_improvement,
                 confidence=gate.confidence)
    shown = (f"{metric} {mine[metric]:.4f} vs the champion's {theirs[metric]:.4f}: better by {improvement:+.4f} "
             f"(needed {gate.min_improvement:g}), p={p_value:.3f} (needed <= {1 - gate.confidence:.3f})")
    if improvement > 0 and improvement >= gate.min_improvement and p_value <= 1 - gate.confidence:
        return decision(True, f"{shown}: a real win", theirs, champion.sha, **stats), theirs
    why = "not better" if improvement <= 0 else ("below the margin" if improvement < gate.min_improvement
                                                  else "within noise")
    return decision(False, f"not promoted: {shown}: {why}", theirs, champion.sha, **stats), theirs


BOOTSTRAP_SAMPLES = 1000


def paired_bootstrap(kind, own: dict, other: dict, metric: str, sign: float, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """(observed improvement, one-sided p-value): the same row indices resampled for both models, `samples` times;
    p is the share of resamples in which the challenger is not better (improvement <= 0). Seeded: the same rows
    give the same decision."""
    n = len(own["reference" if "reference" in own else "label"])
    everything = np.arange(n)
    observed = sign * (kind.metric(own, metric, everything) - kind.metric(other, metric, everything))
    rng = np.random.default_rng(seed)
    worse = 0
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        worse += sign * (kind.metric(own, metric, idx) - kind.metric(other, metric, idx)) <= 0
    return float(observed), (worse + 1) / (samples + 1)  # +1: a bootstrap p-value is never exactly 0


def find_champion(repo_id: str) -> tuple[PinnedRepo, str | None] | None:
    """The model at the repo's head and its `model.safetensors` sha256 (None when sharded); None: no model there."""
    sha = hub.head(repo_id, "model")
    if sha is None:
        return None
    files = hub.lfs_digests(repo_id, "model", sha)
    if not any(p.endswith(".safetensors") for p in files) or "config.json" not in files:
        return None  # a repo holding no model (just created, or an earlier publish cut short) has no champion
    return PinnedRepo(repo_id=repo_id, repo_type="model", revision="main", sha=sha), files.get("model.safetensors")


def gate_markdown(decision: GateDecision, challenger: dict[str, Any], champion: dict[str, Any] | None,
                  metrics: list[str]) -> str:
    """The decision and both sides' metrics -> the markdown table of the `promotion-gate` artifact."""
    verdict = "**promoted**" if decision.promoted else "**not promoted**"
    lines = [f"{verdict}: {decision.reason}", "", "| metric | challenger | champion |", "|---|---|---|"]
    for m in [m for m in metrics if m in challenger]:
        value = (champion or {}).get(m)
        theirs = f"{value:.4f}" if value is not None and value == value else "n/a"  # NaN: not computed
        gated = " (gated)" if m == decision.metric else ""
        lines.append(f"| {m}{gated} | {challenger[m]:.4f} | {theirs} |")
    lines += ["", f"threshold: {decision.threshold:.4f}; champion commit: `{decision.champion_sha or 'none'}`"]
    if decision.p_value is not None:
        lines += [f"improvement: {decision.improvement:+.4f} (needed {decision.min_improvement:g}); paired bootstrap "
                  f"p = {decision.p_value:.4f} (needed <= {1 - decision.confidence:.3f}, "
                  f"{BOOTSTRAP_SAMPLES} resamples)"]
    return "\n".join(lines) + "\n"


def _better(direction: Direction):
    return (lambda a, b: a > b) if direction is Direction.higher else (lambda a, b: a < b)
