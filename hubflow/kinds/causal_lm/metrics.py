"""Causal LM metrics: loss and perplexity of the references (teacher forcing), and, where rows have an answer to
match, exact match and chrF of the generations against it; rendered as markdown tables and a loss curve.

    score(table)       prediction rows -> the report dict that `report.json` holds
    headline(report)   -> the metrics the gate and the card read (directions in the kind)
"""

from __future__ import annotations

import math
from typing import Any

from ...figures import loss_curve

EXAMPLES_SHOWN = 5


def score(table) -> dict[str, Any]:
    rows = table.to_pylist()
    scored = [r for r in rows if r.get("tokens")]
    if not scored:
        raise ValueError("no row carries a reference to score (nll/tokens); nothing to evaluate against")
    nll, tokens = sum(r["nll"] for r in scored), sum(r["tokens"] for r in scored)
    loss = nll / tokens
    report: dict[str, Any] = {"rows": len(rows), "scored_tokens": int(tokens), "loss": loss,
                              "perplexity": math.exp(min(loss, 50.0))}
    answered = [r for r in rows if r.get("reference") and r.get("finish_reason")]
    if answered:
        from sacrebleu.metrics import CHRF

        hyps, refs = [r["completion"].strip() for r in answered], [r["reference"].strip() for r in answered]
        report["exact_match"] = sum(h == ref for h, ref in zip(hyps, refs)) / len(answered)
        report["chrf"] = CHRF().corpus_score(hyps, [refs]).score / 100  # 0..1, as every other gate metric
        report["generated_rows"] = len(answered)
    finished = [r["finish_reason"] for r in rows if r.get("finish_reason")]
    report["finish_reasons"] = {k: finished.count(k) for k in sorted(set(finished))}
    new = [r["new_tokens"] for r in rows if r.get("finish_reason")]
    report["mean_new_tokens"] = sum(new) / len(new) if new else 0.0
    report["examples"] = [{k: r.get(k) for k in ("message", "reference", "completion", "finish_reason")}
                          for r in answered[:EXAMPLES_SHOWN]]
    return report


def headline(report: dict[str, Any]) -> dict[str, float]:
    keys = ("loss", "perplexity", "exact_match", "chrf")
    return {**{k: float(report[k]) for k in keys if k in report}, "test_rows": float(report["rows"])}


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["| metric | value |", "|---|---|",
             f"| loss (per reference token) | {report['loss']:.4f} |", f"| perplexity | {report['perplexity']:.3f} |"]
    if "exact_match" in report:
        lines += [f"| exact match | {report['exact_match']:.4f} |", f"| chrF | {report['chrf']:.4f} |"]
    lines += [f"| rows | {report['rows']} |", f"| mean new tokens | {report['mean_new_tokens']:.1f} |",
              f"| finish reasons | {', '.join(f'{k}: {v}' for k, v in report['finish_reasons'].items()) or '—'} |"]
    if report.get("examples"):
        lines += ["", "| message | reference | generated | finish |", "|---|---|---|---|"]
        lines += [f"| {_cell(e['message'])} | {_cell(e['reference'])} | {_cell(e['completion'])} | "
                  f"{e['finish_reason']} |"
                  for e in report["examples"]]
    return "\n".join(lines) + "\n"


def render_figures(report: dict[str, Any], history: dict[str, Any] | None) -> dict[str, bytes]:
    return {"loss_curve.png": loss_curve(history)} if history and history.get("steps") else {}


def _cell(text: str | None, limit: int = 120) -> str:
    text = (text or "").replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"
