"""The ``export`` task: a published run as an HF PEFT folder (and merged model), pushed and stored on request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import hub_token, store_access
from peftpipe.engines import engine_for
from peftpipe.export import export_stage
from peftpipe.spec import LoadedSpec
from peftpipe.stores import open_store


@task(name="export", task_run_name="export-{run_id}", cache_policy=NO_CACHE)
def export_task(loaded: LoadedSpec, run_id: str, out_dir: Path, merge: bool = False, push_repo: str | None = None,
                max_shard_size: str = "5GB", tolerance: float | None = None) -> dict[str, Any]:
    """Export ``run_id`` into ``out_dir`` and add it to the run in the artifact store.

    The Hub token (fetching the base, pushing) is read from the spec's Secret block here, never passed in.
    """
    model = loaded.spec.model
    token, _ = hub_token(model.token_secret)
    store = open_store(loaded.spec.artifacts.store, loaded.spec.artifacts.s3, store_access(loaded))
    summary = export_stage(store, run_id, out_dir, engine_for, merge=merge, push_repo=push_repo,
                           endpoint=model.endpoint, token=token,
                           cache_dir=Path(model.cache_dir).expanduser() if model.cache_dir else None,
                           max_shard_size=max_shard_size, tolerance=tolerance)
    log = get_run_logger()
    if summary["parity"]:
        log.info("merged model: max |logit diff| %.3g (tolerance %g) on %d prompts",
                 summary["parity"]["max_abs_logit_diff"], summary["parity"]["tolerance"], summary["parity"]["prompts"])
    log.info("exported %d files of run %s; manifest %s", len(summary["files"]), run_id, summary.get("manifest"))
    return summary
