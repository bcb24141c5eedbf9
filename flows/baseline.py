"""Base model vs adapter: when the finetune flow scores the base model too, and how the UI shows it."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from peftpipe.artifacts import ArtifactStoreError
from peftpipe.evaluation import comparison_rows
from peftpipe.spec import LoadedSpec
from flows.store import artifact_store


def baseline_wanted(loaded: LoadedSpec, run_id: str) -> bool:
    """``evaluation.baseline`` as set; unset: on when the store holds no other run of this spec (its first run)."""
    if loaded.spec.evaluation.baseline is not None:
        return loaded.spec.evaluation.baseline
    try:
        earlier = [r for r in artifact_store(loaded).list_runs() if r != run_id and r.startswith(f"{loaded.spec.name}-")]
    except (ArtifactStoreError, OSError) as error:
        get_run_logger().warning("could not list earlier runs (%s): scoring the base model too", error)
        return True
    return not earlier


def publish_baseline_artifact(metrics: dict[str, Any]) -> str | None:
    """The ``base-vs-adapter`` table (metric, base model, adapter, delta), when the base model was scored."""
    rows = comparison_rows(metrics)
    if not rows:
        return None
    create_table_artifact(rows, key="base-vs-adapter",
                          description=f"Base model without the adapter vs with it, on the same {metrics['records']}"
                          " test records")
    return "base-vs-adapter"
