"""The engine's work before fine-tuning (nemo: the base model as a .nemo, converted or restored)."""

from __future__ import annotations

from contextlib import nullcontext

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import store_access
from peftpipe.engines import engine_for
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec
from tasks.gpu_slot import gpu_job_slot


@task(name="convert", task_run_name="convert", cache_policy=NO_CACHE)
def prepare_engine(loaded: LoadedSpec, paths: RunPaths, model: FetchedModel) -> None:
    """What the engine needs before training; for nemo the convert stage: ``nemo.nemo_path``, the
    artifact store's verified copy, or a convert job.

    The store is read (and a conversion written) with the credentials of the spec's S3 block,
    resolved here so that they never become a task parameter.
    """
    logger = get_run_logger()
    # A CPU conversion (nemo.convert.gpus: 0) takes no GPU slot.
    slot = gpu_job_slot(loaded) if loaded.spec.nemo.convert.gpus else nullcontext()
    with slot:
        engine_for(loaded.spec.engine).prepare(loaded, paths, model, on_line=logger.info, access=store_access(loaded))
