"""The finetune flow's stages for ``engine: nemo``: convert, fine-tune attempts, evaluate.

Called by flows/finetune.py between prepare-data and publish; every stage is a Slurm job
running NeMo's scripts in the spec's container.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from peftpipe.attempts import AttemptRecord, first_attempt, run_attempts
from peftpipe.engines.nemo.resources import data_parallel_size
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.retry import AttemptSettings
from peftpipe.slurm.attempt_history import resumed_attempt
from peftpipe.spec import LoadedSpec
from peftpipe.stages import TrainResult
from tasks.convert import convert
from tasks.nemo import nemo_evaluate, nemo_finetune


def nemo_finetune_with_retries(loaded: LoadedSpec, paths: RunPaths) -> TrainResult:
    """Attempts until one completes; an OOM lowers the micro batch and the next attempt resumes.

    The per-rank batch is global / (GPUs / (TP x PP)): Megatron's data-parallel size, not the
    GPU count the hf engine divides by. The hf preflight (a memory model of transformers + peft)
    does not apply, so attempt 1 uses the spec's micro batch.
    """
    def run_one(settings: AttemptSettings) -> TrainResult:
        return nemo_finetune(loaded, paths, settings.micro_batch_size, settings.attempt,
                             settings.activation_checkpointing, mem=f"{settings.mem_gb}G" if settings.mem_gb else None)

    spec = loaded.spec
    first = first_attempt(spec, attempt=resumed_attempt(loaded, paths, "finetune", get_run_logger().warning))
    return run_attempts(spec, first, run_one, on_records=_publish_attempts, log=get_run_logger().warning,
                        data_parallel=data_parallel_size(spec))


def _publish_attempts(records: list[AttemptRecord]) -> None:
    """The same table (and key) as the hf engine's, so a person finds it in one place."""
    create_table_artifact([record.as_row() for record in records], key="finetune-attempts",
                          description="Fine-tune attempts: diagnosis, settings and Slurm job of each")


def nemo_stages(loaded: LoadedSpec, paths: RunPaths, model: FetchedModel) -> tuple[TrainResult, dict[str, Any]]:
    """Convert (or reuse the stored .nemo), fine-tune with retries, evaluate; publish follows in the caller."""
    convert(loaded, paths, model)
    trained = nemo_finetune_with_retries(loaded, paths)
    metrics = nemo_evaluate(loaded, paths)
    return trained, metrics
