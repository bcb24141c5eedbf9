"""What to run next after a failed attempt: the retry policy, pure.

A GPU OOM lowers micro_batch_size to the largest divisor of the per-rank batch below it, so
the global batch stays and only gradient accumulation grows; at 1, the memory ladder's next rung
is turned on (``memory_ladder.py``: checkpointing, then offloading the checkpointed activations,
... as far as the spec and the engine allow). Every retry resumes from the latest checkpoint of
the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from peftpipe.failures import Diagnosis, FailureKind
from peftpipe.memory_ladder import RUNG_TEXT, MemoryLadder, MemoryRungs
from peftpipe.spec_execution import memory_mb, memory_text

if TYPE_CHECKING:
    from peftpipe.spec import RunSpec


@dataclass(frozen=True)
class AttemptSettings:
    """What one fine-tune attempt runs with; travels whole from the retry policy to the job renderer.

    Memory stays in megabytes (Slurm's own unit) so that ``mem: 4000M`` is submitted as
    ``--mem=4000M``: no rounding to whole gigabytes on the way.
    """

    attempt: int
    micro_batch_size: int
    activation_checkpointing: bool = False
    mem_mb: int | None = None  # None: the job asks for execution.slurm.mem as written
    mem_raised: bool = False
    exclude_nodes: tuple[str, ...] = ()  # nodes a hardware fault was seen on (sbatch --exclude)
    offload_activations: bool = False  # the ladder's offload rung: checkpointed inputs in host memory
    shard: bool = False  # the ladder's shard rung: parameters sharded over the ranks (FSDP2)
    quantize_base: bool = False  # the ladder's 4-bit rung: frozen base weights in NF4 (QLoRA)

    @property
    def memory(self) -> MemoryRungs:
        return MemoryRungs(checkpointing=self.activation_checkpointing, offload=self.offload_activations,
                           shard=self.shard, quantize_base=self.quantize_base)

    def with_memory(self, rungs: MemoryRungs) -> AttemptSettings:
        return replace(self, activation_checkpointing=rungs.checkpointing, offload_activations=rungs.offload,
                       shard=rungs.shard, quantize_base=rungs.quantize_base)

    @property
    def mem(self) -> str | None:
        """``--mem`` for this attempt, exact: ``4000M``, ``2G``."""
        return memory_text(self.mem_mb) if self.mem_mb is not None else None


def spec_settings(spec: RunSpec, micro_batch_size: int | None = None, attempt: int = 1) -> AttemptSettings:
    """The spec's own settings for a job, before any memory rung: the micro batch (the one place it defaults
    to the spec's) and, on Slurm, the job's memory as written. Evaluation jobs run with these as they are."""
    slurm = spec.execution.slurm
    mem_mb = memory_mb(slurm.mem) if spec.execution.backend == "slurm" else None
    return AttemptSettings(attempt=attempt, micro_batch_size=micro_batch_size or spec.train.micro_batch_size,
                           mem_mb=mem_mb)


@dataclass(frozen=True)
class RetryDecision:
    next: AttemptSettings | None
    reason: str

    @property
    def retry(self) -> bool:
        return self.next is not None


def smaller_micro_batch(current: int, global_batch_size: int, data_parallel: int) -> int | None:
    """The largest divisor of the per-rank batch below ``current``, or None at 1."""
    per_rank = global_batch_size // data_parallel
    smaller = [d for d in range(current - 1, 0, -1) if per_rank % d == 0]
    return smaller[0] if smaller else None


# Failures a resubmission repeats: the decision says what to change instead.
NO_RETRY_FIX = {
    FailureKind.STORAGE_FULL: "storage full (no space or quota) where the run writes. Fix: free space or raise"
                              " the quota there (or point workdir elsewhere), then run again; it resumes from the"
                              " last intact checkpoint",
    FailureKind.CONTAINER_ERROR: "the job's container or environment did not start. Fix: check"
                                 " execution.slurm.container (image path, registry access, mounts) and that the"
                                 " image has the engine's packages",
    FailureKind.NAN_LOSS: "the loss became NaN/inf. Fix: lower train.learning_rate, check the data, or use"
                          " bf16 instead of fp16",
    FailureKind.RESOURCE_ERROR: "a GPU resource limit that is not memory (shared memory, cuDNN). Fix: use a"
                                " GPU type the kernels support (execution.slurm.gpu_type) or turn the fused kernels"
                                " off",
}


def next_attempt(diagnosis: Diagnosis, current: AttemptSettings, global_batch_size: int, data_parallel: int,
                 max_attempts: int, mem_limit_mb: int | None = None,
                 failed_nodes: tuple[str, ...] = (), ladder: MemoryLadder | None = None) -> RetryDecision:
    """The next attempt's settings, or None with the reason; ``failed_nodes`` ran the failed attempt.

    ``ladder``: the memory rungs a GPU OOM may climb (default: checkpointing only, as every engine has it).
    """
    kind = diagnosis.kind
    if kind is FailureKind.NONE:
        return RetryDecision(None, "the attempt succeeded")
    if current.attempt >= max_attempts:
        return RetryDecision(None, f"attempt limit {max_attempts} reached; last failure {kind.value}: {diagnosis.evidence}")
    following = replace(current, attempt=current.attempt + 1)
    if kind is FailureKind.GPU_OOM:
        smaller = smaller_micro_batch(current.micro_batch_size, global_batch_size, data_parallel)
        if smaller is not None:
            return RetryDecision(replace(following, micro_batch_size=smaller),
                                 f"GPU out of memory at micro batch {current.micro_batch_size}; retrying at {smaller}"
                                 f" (gradient accumulation {global_batch_size // data_parallel // smaller})")
        ladder = ladder or MemoryLadder.for_run("auto", False, data_parallel)
        at = f"micro batch 1 with memory rungs {current.memory.describe()}"
        rung = ladder.next_rung(current.memory)
        if rung is not None:
            return RetryDecision(following.with_memory(current.memory.plus(rung)),
                                 f"GPU out of memory at {at}; next rung: {RUNG_TEXT[rung]}")
        return RetryDecision(None, f"GPU out of memory at {at}, the top of the memory ladder"
                                   f" ({ladder.out_of_reach()}). Fix: use more GPUs or tensor parallelism, allow the"
                                   " rungs above in train.memory, or lower train.max_seq_length")
    if kind is FailureKind.HOST_OOM:
        if current.mem_mb is None or mem_limit_mb is None:
            return RetryDecision(None, "host memory exhausted. Fix: request more memory for the job (--mem)")
        raised = min(current.mem_mb * 2, mem_limit_mb)
        held, limit = _size(current.mem_mb), _size(mem_limit_mb)
        if current.mem_raised or raised <= current.mem_mb:
            return RetryDecision(None, f"host memory exhausted at {held} (limit {limit});"
                                       f" it needed more than {held}. Fix: use a partition with more"
                                       " memory per node or a smaller model")
        return RetryDecision(replace(following, mem_mb=raised, mem_raised=True),
                             f"host memory exhausted at {held}; retrying with {_size(raised)}")
    if kind in (FailureKind.TIMEOUT, FailureKind.PREEMPTED, FailureKind.NODE_FAIL, FailureKind.COMM_TIMEOUT):
        return RetryDecision(following, f"{kind.value}: resubmitting with the same settings; resumes from the"
                                        " latest checkpoint")
    if kind is FailureKind.HARDWARE_FAULT:
        nodes = tuple(sorted(set(current.exclude_nodes) | set(failed_nodes)))
        away = f" away from {', '.join(failed_nodes)}" if failed_nodes else ""
        return RetryDecision(replace(following, exclude_nodes=nodes),
                             f"GPU or node hardware fault: resubmitting{away}; resumes from the latest checkpoint")
    if kind in NO_RETRY_FIX:
        return RetryDecision(None, f"{NO_RETRY_FIX[kind]}; not retried: {diagnosis.evidence}")
    if kind is FailureKind.CONFIG_ERROR:
        return RetryDecision(None, f"configuration error, retrying cannot fix it: {diagnosis.evidence}")
    return RetryDecision(None, f"unrecognised failure, not retried: {diagnosis.evidence}")


def _size(mb: int) -> str:
    """For people: ``2 GB`` when whole gigabytes, else ``4000 MB`` (never rounded)."""
    return f"{mb // 1024} GB" if mb % 1024 == 0 else f"{mb} MB"
