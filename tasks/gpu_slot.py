"""A Prefect global concurrency slot around every GPU job, so a deployment cannot flood the queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from prefect.concurrency.sync import concurrency

from peftpipe.spec import LoadedSpec


@contextmanager
def gpu_job_slot(loaded: LoadedSpec) -> Iterator[None]:
    """Hold one slot of the spec's global concurrency limit while a Slurm job is queued or running.

    Without a limit of that name (``prefect gcl create peftpipe-gpu-jobs --limit 4``) nothing
    is capped; local runs never take a slot.
    """
    execution = loaded.spec.execution
    slot = concurrency(execution.slurm.gpu_job_limit, occupy=1) if execution.backend == "slurm" else nullcontext()
    with slot:
        yield
