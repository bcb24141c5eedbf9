"""Why did a job end? A pure diagnosis from the Slurm state, the exit code and the log tail.

Signatures come from ../shared/reference/nemo.md section 5 (CUDA OOM formats of old and new
torch, library allocation failures, NCCL watchdog, Slurm cgroup OOM), perf_reliability.md and
NeMo's own start-up errors (omegaconf, gpt_sft_dataset.py, exp_manager.py).
When a log shows several failures, the root cause wins: an OOM on one rank beats the NCCL
timeout or SIGTERM it caused on the others.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import Enum


class FailureKind(str, Enum):
    GPU_OOM = "gpu_oom"
    HOST_OOM = "host_oom"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    NODE_FAIL = "node_fail"
    COMM_TIMEOUT = "comm_timeout"
    CONFIG_ERROR = "config_error"
    NONE = "none"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Diagnosis:
    kind: FailureKind
    evidence: str

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "kind": self.kind.value}


_RANK_PREFIX = re.compile(r"^\[(default)?rank\d+\]:\s*")

# Ordered by precedence: root causes first, consequences (watchdog timeouts) last.
LOG_SIGNATURES: tuple[tuple[FailureKind, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        (FailureKind.GPU_OOM, r"CUDA out of memory|torch\.(cuda\.)?OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED"
                              r"|Cuda failure '?out of memory'?"),
        (FailureKind.HOST_OOM, r"oom-kill event|task \d+: Out Of Memory|Exceeded (job|step) memory limit"
                               r"|DefaultCPUAllocator: can't allocate memory"),
        (FailureKind.CONFIG_ERROR, r"error: unrecognized arguments:|error: the following arguments are required:"
                                   r"|Could not override '|Key '[^']+' is not in struct|invalid run spec"
                                   r"|SpecError: "
                                   # NeMo start-up errors no retry fixes: a required config key left
                                   # ???, a template without the label at its end, and several
                                   # finished -last checkpoints (exp_manager.check_resume).
                                   r"|MissingMandatoryValue|must be at the end of prompt_template"
                                   r"|Multiple checkpoints .* that matches \*last\.ckpt"
                                   # AutoModel (engine automodel): a config key its component does not
                                   # take, a _target_ or module its environment lacks, a batch its
                                   # step scheduler refuses.
                                   r"|got an unexpected keyword argument|ModuleNotFoundError: No module named"
                                   r"|must be divisible by local_batch_size"),
        (FailureKind.NODE_FAIL, r"DUE TO NODE FAIL"),
        (FailureKind.PREEMPTED, r"DUE TO PREEMPTION"),
        (FailureKind.TIMEOUT, r"DUE TO TIME LIMIT"),
        # The training script's own line when Slurm's --signal (ahead of the time limit or a
        # preemption) made it checkpoint and exit: resubmitting resumes from that checkpoint.
        (FailureKind.TIMEOUT, r"stopping at step \d+ on signal \d+"),
        (FailureKind.COMM_TIMEOUT, r"Watchdog caught collective operation timeout|ran for \d+ milliseconds before"
                                   r" timing out|NCCL communicator was aborted|Timed out waiting for \d+ms"),
    )
)

# Failures that end the job whatever the other ranks do: stop it on the first such line.
FATAL_AT_ONCE = (FailureKind.GPU_OOM, FailureKind.HOST_OOM)


def fatal_line(line: str) -> str | None:
    """The line itself if it shows a failure no rank recovers from (a stop rule for watchers)."""
    clean = _RANK_PREFIX.sub("", line).strip()
    if clean.startswith("raise "):
        return None  # a traceback's source line; the message itself follows it
    for kind, pattern in LOG_SIGNATURES:
        if kind in FATAL_AT_ONCE and pattern.search(clean):
            return clean
    return None


_LAUNCHER_NOISE = re.compile(r"^(srun|slurmstepd):")

STATE_KINDS = {
    "OUT_OF_MEMORY": FailureKind.HOST_OOM,
    "TIMEOUT": FailureKind.TIMEOUT,
    "PREEMPTED": FailureKind.PREEMPTED,
    "NODE_FAIL": FailureKind.NODE_FAIL,
}


def diagnose(slurm_state: str | None, exit_code: int | None, log_tail: str) -> Diagnosis:
    """The kind of failure and the one line that shows it.

    ``slurm_state`` is sacct's State (``CANCELLED by 0`` is read as ``CANCELLED``); it may be
    None for local runs. A completed job with exit code 0 is ``none`` whatever its log says.
    """
    state = (slurm_state or "").split(" ")[0].upper()
    if exit_code == 0 and state in ("", "COMPLETED"):
        return Diagnosis(FailureKind.NONE, "")
    lines = [_RANK_PREFIX.sub("", line).strip() for line in log_tail.splitlines()]
    for kind, pattern in LOG_SIGNATURES:
        if kind is FailureKind.COMM_TIMEOUT and state in STATE_KINDS:
            continue  # the scheduler's own verdict beats a watchdog line its kill caused
        # From the bottom: a traceback shows the raising source line before the exception message.
        for line in reversed(lines):
            if pattern.search(line):
                return Diagnosis(kind, line)
    if state in STATE_KINDS:
        return Diagnosis(STATE_KINDS[state], f"Slurm state {slurm_state}")
    # srun's and slurmstepd's own lines report that a task ended, not why.
    last = next((line for line in reversed(lines) if line and not _LAUNCHER_NOISE.match(line)), "")
    return Diagnosis(FailureKind.UNKNOWN, last or f"exit code {exit_code}, state {slurm_state or 'unknown'}")
