"""Classification metrics in pure numpy: accuracy, macro-F1, per-class scores, the confusion matrix, and their
rendering (markdown tables for artifacts and cards, PNG figures).

    score(table, label_names)     prediction rows (label, pred) -> the report dict that `report.json` holds
    headline(report)              -> the metrics the gate and the card read (with their directions in the kind)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...figures import loss_curve, png


def score(table, label_names: list[str]) -> dict[str, Any]:
    """Prediction rows (pyarrow table with `label` and `pred`) -> report; raises when there is nothing to score."""
    if "label" not in table.column_names:
        raise ValueError("the predictions carry no true labels; nothing to evaluate against")
    y_true = table.column("label").to_numpy()
    if y_true.size and y_true.min() < 0:
        raise ValueError("the predictions hold unlabelled rows (label < 0)")
    return build_report(y_true, table.column("pred").to_numpy(), label_names)


def headline(report: dict[str, Any]) -> dict[str, float]:
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "test_rows": float(report["rows"])}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """`cm[t, p]` = rows whose true class is t and predicted class is p."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.shape} rows, y_pred {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} holds ids outside 0..{n_classes - 1}")
    return np.bincount(n_classes * y_true + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support from a confusion matrix.

    A class never seen in truth nor predicted has no meaningful F1, so it is left out of the macro average
    (scikit-learn's default, which averages over the labels present); 0/0 precision or recall counts as 0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.astype(int).tolist(),
    }


def build_report(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """The report dict that `report.json` holds (without the provenance fields the task adds)."""
    cm = confusion_matrix(y_true, y_pred, len(label_names))
    s = scores_from_confusion(cm)
    per_class = [
        {"label": name, **{k: s[k][i] for k in ("precision", "recall", "f1", "support")}}
        for i, name in enumerate(label_names)
    ]
    return {
        "rows": int(cm.sum()),
        "accuracy": s["accuracy"],
        "macro_f1": s["macro_f1"],
        "label_names": list(label_names),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def render_markdown(report: dict[str, Any]) -> str:
    """Three markdown tables: headline metrics, per-class scores, confusion matrix (rows = truth)."""
    names = report["label_names"]
    lines = [
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {report['accuracy']:.4f} |",
        f"| macro-F1 | {report['macro_f1']:.4f} |",
        f"| rows | {report['rows']} |",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {_cell(c['label'])} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
        for c in report["per_class"]
    ]
    lines += ["", "| true \\ predicted | " + " | ".join(_cell(n) for n in names) + " |"]
    lines += ["|---" * (len(names) + 1) + "|"]
    lines += [
        f"| {_cell(name)} | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(names, report["confusion_matrix"])
    ]
    return "\n".join(lines) + "\n"


def render_figures(report: dict[str, Any], history: dict[str, Any] | None) -> dict[str, bytes]:
    """PNG bytes: `confusion_matrix.png` always, `loss_curve.png` when a training history is given."""
    from matplotlib.figure import Figure

    out: dict[str, bytes] = {}
    if history and history.get("steps"):
        out["loss_curve.png"] = loss_curve(history)

    names = report["label_names"]
    cm = np.asarray(report["confusion_matrix"])
    size = 2.5 + 0.5 * len(names)
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    threshold = cm.max() / 2 if cm.size else 0
    for (t, p), v in np.ndenumerate(cm):
        ax.text(p, t, str(v), ha="center", va="center", color="white" if v > threshold else "black")
    fig.tight_layout()
    out["confusion_matrix.png"] = png(fig)
    return out


def _cell(text: str) -> str:
    # A label containing '|' would split a markdown table cell.
    return str(text).replace("|", "\\|")
