"""Where a restarted run picks up its attempts: the last job if it lives, else the next attempt.

A rerun with the same run id re-attaches to the last attempt's job only while that job is
queued, running or completed; after one that failed, was cancelled or is forgotten, it starts
the following attempt, which resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from peftpipe.paths import RunPaths
from peftpipe.slurm.client import SlurmClient
from peftpipe.slurm.status_query import ResilientStatus
from peftpipe.spec import LoadedSpec

_ATTEMPT = re.compile(r"attempt-(\d+)$")


def submitted_attempts(paths: RunPaths, stage: str) -> list[int]:
    """Attempt numbers of ``stage`` that got a job id, in order."""
    numbers = (_ATTEMPT.match(d.name) for d in (paths.root / stage).glob("attempt-*"))
    return sorted(int(m.group(1)) for m in numbers if m and paths.job_id_file(stage, int(m.group(1))).is_file())


def first_attempt_number(paths: RunPaths, stage: str, client: SlurmClient | None = None,
                         on_line: Callable[[str], None] = print, status_outage_s: float = 1800.0) -> int:
    """1 for a new run; the last submitted attempt if its job is live or completed; else the one after."""
    submitted = submitted_attempts(paths, stage)
    if not submitted:
        return 1
    last = submitted[-1]
    job_id = paths.job_id_file(stage, last).read_text().strip()
    states = ResilientStatus(client or SlurmClient(), status_outage_s, on_note=on_line)
    answer = states.query([job_id])
    status = answer.get(job_id) if answer is not None else None
    if answer is None or (status is not None and (not status.terminal or status.state == "COMPLETED")):
        return last  # live, completed or unknown for now: the backend re-attaches or waits for Slurm
    ended = status.state if status is not None else "unknown to Slurm"
    on_line(f"{stage} attempt {last} (Slurm job {job_id}) ended {ended}; this run starts attempt {last + 1},"
            " resuming from the latest checkpoint")
    return last + 1


def resumed_attempt(loaded: LoadedSpec, paths: RunPaths, stage: str, on_line: Callable[[str], None] = print) -> int:
    """The first attempt number of this invocation: always 1 locally (a process dies with its run)."""
    execution = loaded.spec.execution
    if execution.backend != "slurm":
        return 1
    return first_attempt_number(paths, stage, on_line=on_line, status_outage_s=execution.slurm.status_outage_s)
