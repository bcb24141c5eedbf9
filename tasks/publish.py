from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from peftpipe import stages
from peftpipe.data.prepare import PreparedData
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec


@task(name="publish", task_run_name="publish", cache_policy=NO_CACHE)
def publish(loaded: LoadedSpec, paths: RunPaths, run_id: str, model: FetchedModel, data: PreparedData,
            metrics: dict[str, Any]) -> dict[str, Any]:
    """Store adapter, predictions, metrics and logs, then the manifest that marks the run complete."""
    manifest = stages.publish_stage(loaded, paths, run_id, model, data, metrics)
    get_run_logger().info("published %d objects; manifest %s", len(manifest["objects"]), manifest["manifest_url"])
    return manifest
