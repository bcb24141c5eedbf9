"""The log lines that name a failure, by kind, in order of precedence.

Built from real logs (tests/data/failure_corpus.yaml holds each with its public source): PyTorch
and CUDA wordings of GPU out-of-memory old and new, Slurm's and torchrun's reports of the
kernel's OOM killer, GPU hardware faults (ECC, Xid, a launch failure, NCCL system errors),
container start failures (Singularity/Apptainer, pyxis/enroot, a package missing in the image),
storage exhaustion, non-finite losses, GPU resource limits that are not memory, and the
scheduler's own lines. Patterns are general (the wording, not one user's numbers).
Root causes come first: an OOM on one rank beats the NCCL timeout it caused on the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class FailureKind(str, Enum):
    GPU_OOM = "gpu_oom"
    HOST_OOM = "host_oom"
    HARDWARE_FAULT = "hardware_fault"
    CONTAINER_ERROR = "container_error"
    STORAGE_FULL = "storage_full"
    NAN_LOSS = "nan_loss"
    RESOURCE_ERROR = "resource_error"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    NODE_FAIL = "node_fail"
    COMM_TIMEOUT = "comm_timeout"
    CONFIG_ERROR = "config_error"
    NONE = "none"
    UNKNOWN = "unknown"


# A training step or iteration that went through: "step 12/100", "Iteration 150000", "| [step]  104".
STEP_LINE = re.compile(r"(?i)\b(?:step|iteration|iter|global_step)\b\]?\s*[:=]?\s*(\d+)")


@dataclass(frozen=True)
class Signature:
    kind: FailureKind
    pattern: re.Pattern[str]
    # Only when Slurm's state is one of these ("" = a local process); None: any state.
    states: frozenset[str] | None = None
    # Only after a step went through: the same error at the first step is a bug, not the hardware.
    after_healthy_steps: bool = False


def _sig(kind: FailureKind, pattern: str, states: tuple[str, ...] | None = None,
         after_healthy_steps: bool = False) -> Signature:
    return Signature(kind, re.compile(pattern), frozenset(states) if states is not None else None,
                     after_healthy_steps)


K = FailureKind
SIGNATURES: tuple[Signature, ...] = (
    # Storage first: a failed checkpoint write surfaces as many other errors afterwards.
    _sig(K.STORAGE_FULL, r"No space left on device|\[Errno 28\]|Disk quota exceeded|\[Errno 122\]"
                         r"|kind: StorageFull|PytorchStreamWriter failed writing file"),
    # The job never started its program: nothing else in the log is the cause.
    _sig(K.CONTAINER_ERROR, r"^FATAL:\s+(?:could not open image|container creation failed|while extracting"
                            r"|failed to|no executable|stat .*: no such file)"
                            r"|^ERROR\s+: Image path .* doesn't exist"
                            r"|pyxis: (?:failed to import docker image|couldn't start container"
                            r"|container start failed|child \d+ failed)"
                            r"|spank_pyxis\.so: task_init(?:_privileged)?\(\) failed"
                            r"|URL https?://\S+ returned error code: \d{3}"
                            r"|ModuleNotFoundError: No module named "),
    _sig(K.GPU_OOM, r"CUDA out of memory|torch\.(?:cuda\.)?OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED"
                    r"|CUDA error: ?out of memory|Cuda failure '?out of memory'?|cudaErrorMemoryAllocation"
                    r"|CUDNN_STATUS_ALLOC_FAILED|CUDA driver error: out of memory"),
    _sig(K.HOST_OOM, r"oom[-_]kill event|task \d+: Out Of Memory|Exceeded (?:job|step) memory limit"
                     r"|killed by the cgroup out-of-memory handler|step tasks have been OOM Killed"
                     r"|DefaultCPUAllocator: (?:can't allocate|not enough) memory"),
    _sig(K.HARDWARE_FAULT, r"uncorrectable ECC error|ECC_UNCORRECTABLE|cudaErrorECCUncorrectable"
                           r"|NVRM: Xid|fallen off the bus|unspecified launch failure|CUDA_ERROR_LAUNCH_FAILED"
                           r"|unhandled system error|ncclSystemError"
                           r"|CUDA-capable device\(s\) is/are busy or unavailable"),
    _sig(K.HARDWARE_FAULT, r"an illegal memory access was encountered|cudaErrorIllegalAddress",
         after_healthy_steps=True),
    _sig(K.NAN_LOSS, r"(?i)found NaN in local grad norm|non-finite loss|\bloss\b[^a-z0-9\n]{0,6}(?:nan|-?inf)\b"
                     r"|loss is (?:nan|inf)|is not finite"),
    _sig(K.RESOURCE_ERROR, r"OutOfResources: out of resource|out of resource: shared memory"
                           r"|CUDNN_STATUS_(?:NOT_SUPPORTED|EXECUTION_FAILED|INTERNAL_ERROR|NOT_INITIALIZED"
                           r"|BAD_PARAM|MAPPING_ERROR|ARCH_MISMATCH)"
                           r"|too many resources requested for launch"),
    _sig(K.CONFIG_ERROR, r"error: unrecognized arguments:|error: the following arguments are required:"
                         r"|Could not override '|Key '[^']+' is not in struct|invalid run spec"
                         r"|SpecError: "
                         # NeMo start-up errors no retry fixes: a required config key left ???, a
                         # template without the label at its end, several finished -last checkpoints.
                         r"|MissingMandatoryValue|must be at the end of prompt_template"
                         r"|Multiple checkpoints .* that matches \*last\.ckpt"
                         # AutoModel (engine automodel): a config key its component does not take, a
                         # batch its step scheduler refuses.
                         r"|got an unexpected keyword argument|must be divisible by local_batch_size"),
    _sig(K.NODE_FAIL, r"DUE TO NODE FAIL"),
    _sig(K.PREEMPTED, r"DUE TO PREEMPTION"),
    _sig(K.TIMEOUT, r"DUE TO TIME LIMIT"),
    # The training script's own line when Slurm's --signal (ahead of the time limit or a
    # preemption) made it checkpoint and exit: resubmitting resumes from that checkpoint.
    _sig(K.TIMEOUT, r"stopping at step \d+ on signal \d+"),
    # torchrun's report of a rank killed by SIGKILL when Slurm says only FAILED: the kernel's OOM
    # killer (a cancellation or a time limit has its own state and line).
    _sig(K.HOST_OOM, r"failed \(exitcode: -9\)|Signal 9 \(SIGKILL\) received by PID", states=("FAILED", "")),
    _sig(K.COMM_TIMEOUT, r"Watchdog caught collective operation timeout|ran for \d+ milliseconds before"
                         r" timing out|NCCL communicator was aborted|Timed out waiting for \d+ms"),
)

# Kinds whose first line ends the job at once (the other ranks would only wait for NCCL's timeout).
FATAL_AT_ONCE = frozenset({K.GPU_OOM, K.HOST_OOM, K.STORAGE_FULL})
