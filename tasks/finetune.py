from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from peftpipe import stages
from peftpipe.failures import fatal_line
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec
from tasks.gpu_slot import gpu_job_slot


@task(name="finetune", task_run_name="finetune-attempt{attempt}-mbs{micro_batch_size}", cache_policy=NO_CACHE)
def finetune(loaded: LoadedSpec, paths: RunPaths, model_path: Path, micro_batch_size: int, attempt: int = 1,
             activation_checkpointing: bool = False, mem: str | None = None,
             exclude_nodes: tuple[str, ...] = ()) -> stages.TrainResult:
    """Run the training script until max_steps; it resumes from the run directory's latest checkpoint.

    The first CUDA (or host) out-of-memory line in the log stops the whole job at once, so the
    other ranks do not sit in a collective until NCCL's timeout.
    """
    logger = get_run_logger()
    with gpu_job_slot(loaded):
        result = stages.finetune_stage(loaded, paths, model_path, micro_batch_size, attempt, on_line=logger.info,
                                       activation_checkpointing=activation_checkpointing, stop_rule=fatal_line,
                                       mem=mem, exclude_nodes=exclude_nodes)
    logger.info("finished at step %d, loss %.4f", result.final_step, result.final_loss)
    return result
