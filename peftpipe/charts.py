"""The training curves as an image: training and validation loss over steps, and the learning rate.

matplotlib (Agg, no display) is imported inside the function, so nothing that merely imports
this module pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHART_FILE = "training_chart.png"


def render_training_chart(records: list[dict[str, Any]], out: Path, title: str, max_steps: int | None = None) -> Path:
    """Write a PNG of ``records`` (finetune/metrics.jsonl rows) to ``out``, atomically; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    steps = [int(r["step"]) for r in records]
    figure = Figure(figsize=(8, 5.2), dpi=100, layout="constrained")
    loss_axes, lr_axes = figure.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    loss_axes.plot(steps, [float(r["loss"]) for r in records], color="#1f77b4", linewidth=1.4,
                   label="training loss")
    validated = [r for r in records if r.get("val_loss") is not None]
    if validated:
        loss_axes.plot([int(r["step"]) for r in validated], [float(r["val_loss"]) for r in validated],
                       color="#d62728", marker="o", markersize=4, linewidth=1.2, label="validation loss")
    loss_axes.set_ylabel("loss")
    loss_axes.grid(alpha=0.3)
    loss_axes.legend(loc="upper right")
    done = f"step {steps[-1]}" + (f" of {max_steps}" if max_steps else "") if steps else "no step yet"
    loss_axes.set_title(f"{title}: {done}", fontsize=11)
    lr_axes.plot(steps, [float(r["lr"]) for r in records], color="#2ca02c", linewidth=1.4)
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("optimizer step")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    lr_axes.grid(alpha=0.3)
    if max_steps:
        lr_axes.set_xlim(0, max_steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    figure.savefig(partial, format="png")
    partial.replace(out)
    return out
