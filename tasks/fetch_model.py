from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from peftpipe import stages
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec


@task(name="fetch-model", task_run_name="fetch-model", cache_policy=NO_CACHE)
def fetch_model(loaded: LoadedSpec, paths: RunPaths) -> FetchedModel:
    """Download the base model (pinned to its commit sha) or check the local model directory."""
    fetched = stages.fetch_stage(loaded, paths)
    get_run_logger().info("model %s at %s (%d files)", fetched.repo_id or fetched.path, fetched.commit_sha, len(fetched.files))
    return fetched
