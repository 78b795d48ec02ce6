"""A MonitorReport for people: a markdown table (the Prefect artifact) and one PNG (scores against thresholds,
and the predicted label shares when the kind has labels)."""

from __future__ import annotations

import math

from .assess import MonitorReport


def markdown(report: MonitorReport, model: str, batch: str, reference: str, figure_uri: str | None = None) -> str:
    """The report as markdown: the verdicts, then one row per score."""
    verdict = ("**DEGRADED** " if report.degraded else "") + ("**DRIFT**" if report.drift else "")
    lines = [f"# Monitor: {verdict or 'no alarm'}", "",
             f"* model `{model}` ({report.task}); batch `{batch}`: {report.batch_rows} rows"
             f"{f', {report.labelled_rows} labelled' if report.labelled_rows else ''}",
             f"* reference `{reference}`: {report.reference_rows} rows; {report.seconds:.1f} s"]
    if report.note:
        lines.append(f"* {report.note}")
    if figure_uri:
        lines.append(f"* figure: `{figure_uri}`")
    lines += ["", "| score | signal | value | alarms when | threshold | reference | batch | alarm | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in report.scores:
        ref = "" if s.reference is None else f"{s.reference:.4g}"
        new = "" if s.batch is None else f"{s.batch:.4g}"
        lines.append(f"| {s.name} | {s.signal} | {s.value:.4g} | {s.alarm_when} | {s.threshold:g} | {ref} | {new} "
                     f"| {'**yes**' if s.alarm else 'no'} | {s.note} |")
    return "\n".join(lines)


def margin(value: float, threshold: float, alarm_when: str) -> float:
    """How far past its threshold a score is, in log10 units: > 0 alarms (comparable across p-values and sizes)."""
    v, t = max(abs(value), 1e-12), max(abs(threshold), 1e-12)
    ratio = math.log10(v / t) if alarm_when == "above" else math.log10(t / v)
    return ratio if value >= 0 or alarm_when == "below" else -abs(ratio)


def figure(report: MonitorReport, label_names: list[str] | None = None) -> bytes:
    """PNG: each score's margin past its threshold (red: alarm), and the label shares reference vs batch."""
    from matplotlib.figure import Figure

    from ..figures import png

    shares = report.plots.get("reference_labels")
    fig = Figure(figsize=(9 if shares else 6, 3.6), dpi=100)
    axes = fig.subplots(1, 2 if shares else 1, squeeze=False)[0]
    names = [s.name for s in report.scores]
    margins = [max(min(margin(s.value, s.threshold, s.alarm_when), 3), -3) for s in report.scores]
    axes[0].barh(names, margins, color=["tab:red" if s.alarm else "tab:gray" for s in report.scores])
    axes[0].axvline(0, color="k", lw=1)
    axes[0].set(xlabel="log10 past threshold (> 0 alarms)", title="Scores")
    axes[0].invert_yaxis()
    if shares:
        labels = label_names or [str(i) for i in range(len(shares))]
        x = range(len(labels))
        axes[1].bar([i - 0.2 for i in x], shares, 0.4, label="reference")
        axes[1].bar([i + 0.2 for i in x], report.plots["batch_labels"], 0.4, label="batch")
        axes[1].set_xticks(list(x), labels, rotation=30)
        axes[1].set(title="Predicted labels", ylabel="share")
        axes[1].legend()
    fig.tight_layout()
    return png(fig)
