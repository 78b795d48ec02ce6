"""The promotion gate: may this run's model replace the one published at the target repo (champion/challenger)?

PipelineResult + PublishConfig -> GateDecision (+ the champion's metrics, for the comparison report).
`gate.mode` off: every run is promoted. threshold: the challenger's test metric must reach the threshold.
champion: it must also beat the model at the target repo's head, scored here on the challenger's own test rows
(same texts, references and max length). Which way is better comes from the task kind (`Direction`).
"""

from __future__ import annotations

from typing import Any

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
    metric = gate.metric.value if gate.metric else kind.default_metric
    mine = result.evaluation.metrics
    better = _better(kind.metrics.get(metric, Direction.higher))

    def decision(promoted: bool, reason: str, champion: dict | None = None, sha: str | None = None) -> GateDecision:
        return GateDecision(promoted=promoted, metric=metric, challenger=mine[metric],
                            champion=champion[metric] if champion else None, champion_sha=sha,
                            threshold=gate.threshold, reason=reason)

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
    theirs = kind.score_model(hub.model_dir(champion), read_predictions(result.predictions), facts,
                              result.config.inference.batch_size)
    if better(mine[metric], theirs[metric]):
        reason = f"{metric} {mine[metric]:.4f} beats the champion's {theirs[metric]:.4f}"
        return decision(True, reason, theirs, champion.sha), theirs
    reason = f"not promoted: {metric} {mine[metric]:.4f} does not beat the champion's {theirs[metric]:.4f}"
    return decision(False, reason, theirs, champion.sha), theirs


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
    for m in metrics:
        theirs = f"{champion[m]:.4f}" if champion else "n/a"
        gated = " (gated)" if m == decision.metric else ""
        lines.append(f"| {m}{gated} | {challenger[m]:.4f} | {theirs} |")
    lines += ["", f"threshold: {decision.threshold:.4f}; champion commit: `{decision.champion_sha or 'none'}`"]
    return "\n".join(lines) + "\n"


def _better(direction: Direction):
    return (lambda a, b: a > b) if direction is Direction.higher else (lambda a, b: a < b)
