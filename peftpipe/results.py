"""What a stage gives back: a fine-tune's :class:`TrainResult`, or :class:`StageFailed` with the evidence.

Shared by every engine and by the retry loop (``attempts.py``), which reads a failure's log
tail to decide the next attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftpipe.backends import StageOutcome


class StageFailed(RuntimeError):
    """A stage's process or job failed; the message has its state, exit code and log tail."""

    def __init__(self, stage: str, outcome: StageOutcome):
        self.stage, self.outcome = stage, outcome
        self.exit_code, self.log_file, self.log_tail = outcome.exit_code, outcome.log_file, outcome.log_tail
        where = f"Slurm job {outcome.job_id} ended {outcome.state}" if outcome.job_id else "process ended"
        early = f"; stopped at once on: {outcome.stopped_early}" if outcome.stopped_early else ""
        super().__init__(f"{stage} failed: {where} with exit code {outcome.exit_code}{early}"
                         f" (log: {outcome.log_file})\n--- log tail ---\n{outcome.log_tail}")


@dataclass(frozen=True)
class TrainResult:
    """What one completed fine-tune attempt produced, read back from the engine's own files or log."""

    final_step: int
    final_loss: float
    resumed_from_step: int | None
    wall_time_s: float
    peak_memory_gib: float  # NaN when the engine does not report it
    micro_batch_size: int
    log_file: str
    job_id: str | None = None
    started_at: float | None = None

    @classmethod
    def from_summary(cls, summary: dict[str, Any], micro_batch_size: int, outcome: StageOutcome) -> TrainResult:
        """From an engine's ``train_summary.json`` fields and the finished job; a null loss (none recorded) is NaN."""
        loss = summary["final_loss"]
        return cls(final_step=summary["final_step"], final_loss=float("nan") if loss is None else loss,
                   resumed_from_step=summary["resumed_from_step"], wall_time_s=summary["wall_time_s"],
                   peak_memory_gib=summary["peak_memory_gib"], micro_batch_size=micro_batch_size,
                   log_file=str(outcome.log_file), job_id=outcome.job_id, started_at=outcome.started_at)
