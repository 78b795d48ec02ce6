"""The promotion gate: may this run's model replace the one published at the target repo (champion/challenger)?

PipelineResult + PublishConfig -> GateDecision (+ a markdown comparison artifact from the `gate` task).
Off: every run is promoted. On: the challenger's test metric must reach the threshold and, with `beat_champion`, beat
the model at the target repo's head, which is scored here on the challenger's own test texts and labels.
Plain functions first (usable without Prefect), then the Prefect task.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.errors import RepositoryNotFoundError
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import hub
from tasks.config import PublishConfig
from tasks.publish import target_repos
from tasks.refs import GateDecision, PinnedRepo, PipelineResult
from tasks.stages import NETWORK_RETRIES


def decide_promotion(result: PipelineResult, cfg: PublishConfig, repo_id: str | None = None) -> GateDecision:
    """Off: promoted. On: the challenger's test metric must reach the threshold and, with `beat_champion`, beat the
    model at the target repo's head, scored on the same test texts and labels."""
    return judge(result, cfg, repo_id)[0]


def judge(result: PipelineResult, cfg: PublishConfig, repo_id: str | None = None) -> tuple[GateDecision, dict | None]:
    """`decide_promotion` plus the champion's metrics (None when it was not scored), for the comparison report."""
    gate, metric = cfg.gate, cfg.gate.metric.value
    mine = result.evaluation.metrics

    def decision(promoted: bool, reason: str, champion: dict | None = None, sha: str | None = None) -> GateDecision:
        return GateDecision(promoted=promoted, metric=metric, challenger=mine[metric],
                            champion=champion[metric] if champion else None, champion_sha=sha,
                            threshold=gate.threshold, reason=reason)

    if not gate.enabled:
        return decision(True, "gate off: every run is published"), None
    if mine[metric] < gate.threshold:
        return decision(False, f"{metric} {mine[metric]:.4f} is below the threshold {gate.threshold:.4f}"), None
    if not gate.beat_champion:
        return decision(True, f"{metric} {mine[metric]:.4f} reaches the threshold {gate.threshold:.4f}"), None
    repo_id = repo_id or target_repos(result, cfg)[0]
    found = find_champion(repo_id)
    if found is None:
        return decision(True, f"no model at {repo_id} yet; {metric} reaches the threshold"), None
    champion, weights = found
    if weights == result.checkpoint.fingerprint:
        return decision(True, f"{repo_id}@{champion.sha[:10]} already is this model", mine, champion.sha), dict(mine)
    theirs = score_champion(champion, result)
    if mine[metric] > theirs[metric]:
        reason = f"{metric} {mine[metric]:.4f} beats the champion's {theirs[metric]:.4f}"
        return decision(True, reason, theirs, champion.sha), theirs
    reason = f"not promoted: {metric} {mine[metric]:.4f} does not beat the champion's {theirs[metric]:.4f}"
    return decision(False, reason, theirs, champion.sha), theirs


def find_champion(repo_id: str) -> tuple[PinnedRepo, str | None] | None:
    """The model at the repo's head and its `model.safetensors` sha256 (None when sharded); None: no model there."""
    client = hub.api()
    try:
        sha = client.repo_info(repo_id).sha
    except RepositoryNotFoundError:
        return None
    files = {f.path: f for f in client.list_repo_tree(repo_id, revision=sha) if hasattr(f, "lfs")}
    if not any(p.endswith(".safetensors") for p in files) or "config.json" not in files:
        return None  # a repo holding no model (just created, or an earlier publish cut short) has no champion
    single = files.get("model.safetensors")
    weights = single.lfs.sha256 if single is not None and single.lfs else None
    return PinnedRepo(repo_id=repo_id, repo_type="model", revision="main", sha=sha), weights


def score_champion(champion: PinnedRepo, result: PipelineResult) -> dict[str, float]:
    """The champion's accuracy and macro-F1 on the challenger's test rows (same texts, labels and max_length)."""
    import numpy as np

    from tasks.evaluate import build_report
    from tasks.infer import predict_texts, read_predictions

    table = read_predictions(result.predictions)
    names = list(result.checkpoint.label_names)
    preds = predict_texts(hub.model_dir(champion), table.column("text").to_pylist(),
                          batch_size=result.config.inference.batch_size,
                          max_length=result.config.preprocess.max_length)
    # Compare by class name: the champion may order its classes differently, or know a class the challenger lacks.
    other = len(names)
    y_pred = np.array([names.index(p["label"]) if p["label"] in names else other for p in preds], dtype=np.int64)
    labels = names + ["<not a challenger class>"] if (y_pred == other).any() else names
    report = build_report(table.column("label").to_numpy(), y_pred, labels)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def gate_markdown(decision: GateDecision, challenger: dict[str, Any], champion: dict[str, Any] | None) -> str:
    """The decision and both sides' metrics -> the markdown table of the `promotion-gate` artifact."""
    verdict = "**promoted**" if decision.promoted else "**not promoted**"
    lines = [f"{verdict}: {decision.reason}", "", "| metric | challenger | champion |", "|---|---|---|"]
    for m in ("accuracy", "macro_f1"):
        theirs = f"{champion[m]:.4f}" if champion else "n/a"
        gated = " (gated)" if m == decision.metric else ""
        lines.append(f"| {m}{gated} | {challenger[m]:.4f} | {theirs} |")
    lines += ["", f"threshold: {decision.threshold:.4f}; champion commit: `{decision.champion_sha or 'none'}`"]
    return "\n".join(lines) + "\n"


# ---- Prefect task -----------------------------------------------------------------------------------------------
@task(name="promotion-gate", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def gate(result: PipelineResult, publish: PublishConfig) -> GateDecision:
    """Champion/challenger on the same test set -> GateDecision, with a comparison artifact."""
    decision, champion = judge(result, publish)
    markdown = gate_markdown(decision, result.evaluation.metrics, champion)
    create_markdown_artifact(key="promotion-gate", markdown=markdown, description="Promotion gate: challenger vs champion")
    return decision
