from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from peftpipe import stages
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec


@task(name="finetune", task_run_name="finetune-attempt{attempt}-mbs{micro_batch_size}", cache_policy=NO_CACHE)
def finetune(loaded: LoadedSpec, paths: RunPaths, model_path: Path, micro_batch_size: int, attempt: int = 1,
             activation_checkpointing: bool = False) -> stages.TrainResult:
    """Run the training script until max_steps; it resumes from the run directory's latest checkpoint."""
    logger = get_run_logger()
    result = stages.finetune_stage(loaded, paths, model_path, micro_batch_size, attempt, on_line=logger.info,
                                   activation_checkpointing=activation_checkpointing)
    logger.info("finished at step %d, loss %.4f", result.final_step, result.final_loss)
    return result
