"""The nemo engine's fine-tune and evaluate tasks: the same names and run names as the hf engine's."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from peftpipe import stages_nemo
from peftpipe.failures import fatal_line
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec
from peftpipe.stages import TrainResult
from blocks.credentials import s3_access
from tasks.gpu_slot import gpu_job_slot


def store_access(loaded: LoadedSpec):  # noqa: ANN201 - S3Access | None, resolved from blocks here, never a parameter
    artifacts = loaded.spec.artifacts
    return s3_access(artifacts.s3.credentials_block) if artifacts.store.startswith("s3://") else None


@task(name="finetune", task_run_name="finetune-attempt{attempt}-mbs{micro_batch_size}", cache_policy=NO_CACHE)
def nemo_finetune(loaded: LoadedSpec, paths: RunPaths, micro_batch_size: int, attempt: int = 1,
                  activation_checkpointing: bool = False, mem: str | None = None) -> TrainResult:
    """One megatron_gpt_finetuning.py job; it resumes from the run's -last checkpoint.

    The first CUDA (or host) out-of-memory line stops the whole job at once, so the other ranks
    do not wait in a collective until NCCL's timeout.
    """
    logger = get_run_logger()
    with gpu_job_slot(loaded):
        result = stages_nemo.nemo_finetune_stage(loaded, paths, micro_batch_size, attempt, on_line=logger.info,
                                                 activation_checkpointing=activation_checkpointing,
                                                 stop_rule=fatal_line, mem=mem, access=store_access(loaded))
    resumed = f", resumed from step {result.resumed_from_step}" if result.resumed_from_step is not None else ""
    logger.info("finished at step %d, last logged loss %.4f%s", result.final_step, result.final_loss, resumed)
    return result


@task(name="evaluate", task_run_name="evaluate", cache_policy=NO_CACHE)
def nemo_evaluate(loaded: LoadedSpec, paths: RunPaths) -> dict[str, Any]:
    """megatron_gpt_generate.py with the trained adapter, then exact match and F1 on its predictions."""
    logger = get_run_logger()
    with gpu_job_slot(loaded):
        metrics = stages_nemo.nemo_evaluate_stage(loaded, paths, on_line=logger.info, access=store_access(loaded))
    logger.info("metrics %s", metrics)
    return metrics
