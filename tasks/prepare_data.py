from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from peftpipe import stages
from peftpipe.data.prepare import PreparedData
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec


@task(name="prepare-data", task_run_name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(loaded: LoadedSpec, paths: RunPaths) -> PreparedData:
    """Convert the dataset into NeMo JSONL splits and fingerprint them (or reuse the cached copy)."""
    prepared = stages.prepare_stage(loaded, paths)
    get_run_logger().info("records %s, duplicates removed %d, skipped %d, fingerprint %s%s", prepared.counts,
                          prepared.duplicates_removed, prepared.skipped, prepared.fingerprint[:12],
                          " (reused from the data cache)" if prepared.reused else "")
    return prepared
