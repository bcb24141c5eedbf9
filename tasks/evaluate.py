"""Evaluation as a task, for every engine (looked up by ``spec.engine``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import store_access
from peftpipe.engines import engine_for
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec
from tasks.gpu_slot import gpu_job_slot


@task(name="evaluate", task_run_name="evaluate", cache_policy=NO_CACHE)
def evaluate(loaded: LoadedSpec, paths: RunPaths, model_path: Path) -> dict[str, Any]:
    """Generate on the test split with the trained adapter and score the predictions."""
    logger = get_run_logger()
    with gpu_job_slot(loaded):
        metrics = engine_for(loaded.spec.engine).evaluate(loaded, paths, model_path, on_line=logger.info,
                                                          access=store_access(loaded))
    logger.info("metrics %s", metrics)
    return metrics
