from __future__ import annotations

from contextlib import nullcontext

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import s3_access
from peftpipe import stages_nemo
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec
from tasks.gpu_slot import gpu_job_slot


@task(name="convert", task_run_name="convert", cache_policy=NO_CACHE)
def convert(loaded: LoadedSpec, paths: RunPaths, model: FetchedModel) -> stages_nemo.BaseNemo:
    """The base model as a .nemo: nemo.nemo_path, the artifact store's verified copy, or a convert job.

    The store is read (and a conversion written) with the credentials of the spec's S3 block,
    resolved here so that they never become a task parameter.
    """
    logger = get_run_logger()
    artifacts = loaded.spec.artifacts
    access = s3_access(artifacts.s3.credentials_block) if artifacts.store.startswith("s3://") else None
    # A CPU conversion (nemo.convert.gpus: 0) takes no GPU slot.
    slot = gpu_job_slot(loaded) if loaded.spec.nemo.convert.gpus else nullcontext()
    with slot:
        base = stages_nemo.convert_stage(loaded, paths, model, on_line=logger.info, access=access)
    logger.info("base .nemo %s (%s, sha256 %s)", base.path, base.source, base.sha256 or "-")
    return base
