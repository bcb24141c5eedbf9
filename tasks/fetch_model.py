from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import hub_token
from peftpipe import stages
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec


@task(name="fetch-model", task_run_name="fetch-model", cache_policy=NO_CACHE)
def fetch_model(loaded: LoadedSpec, paths: RunPaths) -> FetchedModel:
    """Download the base model (pinned to its commit sha), reuse a complete cached copy, or check a local one.

    The Hub token is read from its Secret block here, not passed in, so that it never becomes
    a task parameter (parameters are stored and shown by Prefect).
    """
    token, hint = hub_token(loaded.spec.model.token_secret) if loaded.spec.model.repo_id else (None, "")
    fetched = stages.fetch_stage(loaded, paths, token=token, token_hint=hint)
    origin = "cached copy" if fetched.from_cache else "downloaded"
    get_run_logger().info("model %s at %s (%d files, %s)", fetched.repo_id or fetched.path, fetched.commit_sha,
                          len(fetched.files), origin)
    return fetched
