"""The fine-tune attempt loop: run, diagnose a failure, ask the policy, run again.

Pure of Prefect: the flow passes a ``run_one`` that runs one attempt as a task; a script on a
machine without Prefect passes the stage function itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from peftpipe.failures import diagnose
from peftpipe.engines import ladder_for
from peftpipe.memory_ladder import MemoryLadder, MemoryRungs
from peftpipe.retry import AttemptSettings, next_attempt, spec_settings
from peftpipe.spec import RunSpec, memory_mb
from peftpipe.results import StageFailed, TrainResult


class FinetuneGaveUp(RuntimeError):
    """Every attempt the policy allowed failed; the message says what was tried and what to change."""


@dataclass(frozen=True)
class AttemptRecord:
    """One row of the attempts table a person reads after the run."""

    attempt: int
    micro_batch_size: int
    gradient_accumulation: int
    activation_checkpointing: bool
    mem: str | None
    outcome: str
    kind: str
    evidence: str
    job_id: str | None
    duration_s: float
    resubmitted_after_s: float | None  # from the previous attempt's failure line to this start
    estimated_gib: float | None = None  # the preflight estimate per GPU for these settings
    measured_peak_gib: float | None = None  # what the training script measured (completed attempts)
    last_step: int | None = None  # the last optimizer step this attempt logged (None: it logged none)
    last_loss: float | None = None  # that step's training loss
    memory: str = "none"  # the memory-ladder rungs this attempt ran with ("checkpointing + offload")
    decision: str = ""  # what the policy did next and why (the next rung, the smaller micro batch, giving up)

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def first_attempt(spec: RunSpec, micro_batch_size: int | None = None, attempt: int = 1,
                  memory: MemoryRungs | None = None) -> AttemptSettings:
    """The spec's settings (or a preflight's smaller micro batch and memory rungs), with the job's memory.

    ``attempt`` is 1 for a new run; a rerun after a failed job continues the numbering. Without
    ``memory``, the rungs the spec pins on (train.memory, train.activation_checkpointing).
    """
    return spec_settings(spec, micro_batch_size, attempt).with_memory(memory or ladder_for(spec).start)


def memory_limit_mb(spec: RunSpec) -> int | None:
    slurm = spec.execution.slurm
    if spec.execution.backend != "slurm" or slurm.max_mem is None:
        return None
    return memory_mb(slurm.max_mem)


def run_attempts(spec: RunSpec, first: AttemptSettings, run_one: Callable[[AttemptSettings], TrainResult],
                 on_records: Callable[[list[AttemptRecord]], None] = lambda records: None,
                 log: Callable[[str], None] = print,
                 estimate_gib: Callable[[int, MemoryRungs], float] | None = None,
                 data_parallel: int | None = None,
                 last_logged: Callable[[], tuple[int, float] | None] = lambda: None,
                 ladder: MemoryLadder | None = None) -> TrainResult:
    """Run attempts until one completes, each resuming from the run's latest checkpoint.

    ``data_parallel`` is the number of ranks the global batch is split over; default the hf
    engine's (every GPU). The nemo engine passes GPUs / (TP x PP). ``last_logged`` reads the
    (step, loss) a failed attempt logged last, before the next attempt rewinds the log. ``ladder``:
    the memory rungs an OOM may climb (default: the spec's with its engine's rungs).
    """
    train = spec.train
    ladder = ladder or ladder_for(spec)
    data_parallel = data_parallel or train.data_parallel_size
    per_rank = train.global_batch_size // data_parallel
    records: list[AttemptRecord] = []
    settings = first
    failure_seen_at: float | None = None
    while True:
        started = time.monotonic()
        common = dict(attempt=settings.attempt, micro_batch_size=settings.micro_batch_size,
                      gradient_accumulation=per_rank // settings.micro_batch_size,
                      activation_checkpointing=settings.activation_checkpointing,
                      mem=settings.mem, memory=settings.memory.describe(),
                      estimated_gib=round(estimate_gib(settings.micro_batch_size, settings.memory), 2)
                      if estimate_gib else None)
        try:
            result = run_one(settings)
        except StageFailed as failure:
            outcome = failure.outcome
            # The line that stopped the job early is the root cause even when the teardown that
            # followed (torchrun's SIGTERM traceback, other ranks' errors) pushed it out of the tail.
            evidence = f"{outcome.log_tail}\n{outcome.stopped_early}" if outcome.stopped_early else outcome.log_tail
            diagnosis = diagnose(outcome.state, outcome.exit_code, evidence)
            decision = next_attempt(diagnosis, settings, train.global_batch_size, data_parallel,
                                    train.max_attempts, memory_limit_mb(spec), failed_nodes=split_nodes(outcome.nodes),
                                    ladder=ladder)
            logged = last_logged()
            records.append(AttemptRecord(**common, outcome="failed", kind=diagnosis.kind.value,
                                         last_step=logged[0] if logged else None,
                                         last_loss=logged[1] if logged else None,
                                         evidence=diagnosis.evidence[:300], job_id=outcome.job_id,
                                         decision=decision.reason,
                                         duration_s=round(time.monotonic() - started, 1),
                                         resubmitted_after_s=_latency(failure_seen_at, outcome.started_at)))
            on_records(records)
            log(f"attempt {settings.attempt} failed ({diagnosis.kind.value}): {diagnosis.evidence} -> "
                f"{decision.reason}")
            if decision.next is None:
                tried = ", ".join(f"mbs {r.micro_batch_size}" + (f" + {r.memory}" if r.memory != "none" else "")
                                  for r in records)
                raise FinetuneGaveUp(f"fine-tune failed after {len(records)} attempt(s) ({tried}): "
                                     f"{decision.reason}\nlast attempt: {failure}") from failure
            failure_seen_at = outcome.detected_at or time.time()
            settings = decision.next
            continue
        records.append(AttemptRecord(**common, outcome="completed", kind="none", evidence="", job_id=result.job_id,
                                     duration_s=round(time.monotonic() - started, 1),
                                     resubmitted_after_s=_latency(failure_seen_at, result.started_at),
                                     # NaN: the engine does not report it (nemo); the table says unknown.
                                     measured_peak_gib=round(result.peak_memory_gib, 2)
                                     if math.isfinite(result.peak_memory_gib) else None,
                                     last_step=result.final_step,
                                     last_loss=result.final_loss if math.isfinite(result.final_loss) else None))
        on_records(records)
        return result


def split_nodes(node_list: str) -> tuple[str, ...]:
    """Slurm's NodeList ("gpu[01-02],gpu05") as sbatch --exclude takes it: the whole list, one entry."""
    return (node_list,) if node_list else ()


def _latency(failure_seen_at: float | None, started_at: float | None) -> float | None:
    if failure_seen_at is None or started_at is None:
        return None
    return round(started_at - failure_seen_at, 2)
