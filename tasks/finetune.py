"""One fine-tune attempt as a task, for every engine (looked up by ``spec.engine``)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.credentials import store_access
from peftpipe.engines import engine_for
from peftpipe.failures import fatal_line
from peftpipe.paths import RunPaths
from peftpipe.results import TrainResult
from peftpipe.retry import AttemptSettings
from peftpipe.spec import LoadedSpec
from tasks.gpu_slot import gpu_job_slot


@task(name="finetune", task_run_name="finetune-attempt{settings.attempt}-mbs{settings.micro_batch_size}",
      cache_policy=NO_CACHE)
def finetune(loaded: LoadedSpec, paths: RunPaths, model_path: Path, settings: AttemptSettings) -> TrainResult:
    """One attempt of the engine's training; it resumes from the run directory's latest checkpoint.

    The first CUDA (or host) out-of-memory line in the log stops the whole job at once, so the
    other ranks do not sit in a collective until NCCL's timeout. The store's credentials are
    resolved here (the nemo engine stores its adapter at once), never passed as a parameter.
    """
    logger = get_run_logger()
    with gpu_job_slot(loaded):
        result = engine_for(loaded.spec.engine).finetune(loaded, paths, model_path, settings, on_line=logger.info,
                                                         stop_rule=fatal_line, access=store_access(loaded))
    resumed = f", resumed from step {result.resumed_from_step}" if result.resumed_from_step is not None else ""
    logger.info("finished at step %d, loss %.4f%s", result.final_step, result.final_loss, resumed)
    return result
