"""Figures every task kind draws: the training loss curve, as PNG bytes.

Figure objects, not pyplot: no global figure registry, so drawing is safe in a threaded Prefect worker.
"""

from __future__ import annotations

import io
from typing import Any


def loss_curve(history: dict[str, Any]) -> bytes:
    """Train loss per optimizer step, and validation loss at each evaluation."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.subplots()
    ax.plot([s["step"] for s in history["steps"]], [s["loss"] for s in history["steps"]], lw=1, label="train loss")
    evals = history.get("evals") or []
    if evals:
        ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation loss")
    ax.set(xlabel="optimizer step", ylabel="loss", title="Training loss")
    ax.legend()
    fig.tight_layout()
    return png(fig)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
