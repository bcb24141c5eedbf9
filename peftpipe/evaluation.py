"""metrics.json of an evaluation: the adapter's scores, and the base model's with the delta when it was scored too.

Engine-neutral: it reads the predictions files and losses an engine's evaluate stage wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftpipe.metrics import score_predictions
from peftpipe.spec import RunSpec

PUBMEDQA_LABELS = ["yes", "no", "maybe"]


def label_set(spec: RunSpec) -> list[str] | None:
    """Declared labels, PubMedQA's three, or None (then detected from the gold answers)."""
    if spec.evaluation.labels:
        return spec.evaluation.labels
    return PUBMEDQA_LABELS if spec.dataset.format == "pubmedqa" else None


def scores(spec: RunSpec, predictions_file: Path, loss: float | None) -> dict[str, Any]:
    """The wanted metrics of one predictions file (``records`` always)."""
    wanted = set(spec.evaluation.metrics)
    found = {**score_predictions(predictions_file, label_set(spec)), "loss": loss}
    return {k: v for k, v in found.items() if (k in wanted and v is not None) or k == "records"}


def with_baseline(metrics: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus ``baseline`` (the base model's scores) and ``delta`` (adapter minus base)."""
    delta = {k: v - baseline[k] for k, v in metrics.items()
             if k != "records" and isinstance(v, (int, float)) and isinstance(baseline.get(k), (int, float))}
    return {**metrics, "baseline": baseline, "delta": delta}


def comparison_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric: base model, adapter, delta (for the CLI summary and the UI artifact)."""
    baseline, delta = metrics.get("baseline") or {}, metrics.get("delta") or {}
    return [{"metric": k, "base model": round(baseline[k], 4), "adapter": round(v, 4),
             "delta": f"{delta[k]:+.4f}"} for k, v in metrics.items() if k in delta]
