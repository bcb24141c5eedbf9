"""Watch one Slurm job until it ends: back-off polling of its state, tailing of its log.

The state costs the controller an RPC, so it is asked with back-off (2 s doubling up to a
cap); the log is a file on the shared file system, read every second at no cost to Slurm,
which is what lets a failure line (a CUDA OOM on one rank) end the job at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from peftpipe.interrupts import raise_if_interrupted
from peftpipe.slurm.client import JobStatus, SlurmClient
from peftpipe.slurm.status_query import ResilientStatus

LineSink = Callable[[str], None]
# Returns the evidence (the line) when the job should be stopped at once, else None.
StopRule = Callable[[str], "str | None"]


def backoff_intervals(first_s: float = 2.0, cap_s: float = 30.0, factor: float = 2.0) -> Iterator[float]:
    """2, 4, 8, 16, 30, 30, ... seconds."""
    interval = first_s
    while True:
        yield min(interval, cap_s)
        interval = min(interval * factor, cap_s)


@dataclass(frozen=True)
class WatchResult:
    status: JobStatus
    log_file: Path
    log_tail: str
    stopped_early: str | None = None  # the line that made the watcher cancel the job
    detected_at: float | None = None  # wall clock of that line, for detection-to-resubmission latency


class LogFollower:
    """Reads whatever a job appended to its log since the last call, whole lines only."""

    def __init__(self, path: Path, tail_lines: int = 80):
        self.path = path
        self.offset = 0
        self.partial = ""
        self.tail: deque[str] = deque(maxlen=tail_lines)

    def new_lines(self) -> list[str]:
        try:
            with self.path.open("r", encoding="utf-8", errors="replace") as log:
                log.seek(self.offset)
                chunk = log.read()
                self.offset = log.tell()
        except FileNotFoundError:
            return []
        text = self.partial + chunk
        lines = text.split("\n")
        self.partial = lines.pop()
        self.tail.extend(lines)
        return lines

    def flush(self) -> list[str]:
        lines = self.new_lines()
        if self.partial:
            lines.append(self.partial)
            self.tail.append(self.partial)
            self.partial = ""
        return lines

    def tail_text(self) -> str:
        return "\n".join(self.tail)


def watch_job(client: SlurmClient, job_id: str, log_file: Path, *, poll_cap_s: float = 30.0,
              on_line: LineSink = lambda line: None, on_state: Callable[[JobStatus], None] = lambda s: None,
              stop_rule: StopRule | None = None, log_every_s: float = 1.0,
              sleep: Callable[[float], None] = time.sleep, status_outage_s: float = 1800.0) -> WatchResult:
    """Block until ``job_id`` reaches a terminal state; cancel it when ``stop_rule`` fires.

    A failed status query is retried with back-off (the controller answers while accounting is
    down); after ``status_outage_s`` without any answer :class:`SlurmUnreachable` is raised and
    the job is left as it is.
    """
    follower = LogFollower(log_file)
    states = ResilientStatus(client, status_outage_s, on_note=on_line)
    intervals = backoff_intervals(cap_s=poll_cap_s)
    next_poll = time.monotonic()
    last_state: str | None = None
    stopped: str | None = None
    detected_at: float | None = None
    status: JobStatus | None = None
    while True:
        raise_if_interrupted()
        for line in follower.new_lines():
            on_line(line)
            if stop_rule is not None and stopped is None:
                evidence = stop_rule(line)
                if evidence is not None:
                    stopped, detected_at = evidence, time.time()
                    client.cancel([job_id])
                    next_poll = time.monotonic()  # see the cancellation through without back-off
        if time.monotonic() >= next_poll:
            answer = states.query([job_id])
            if answer is None:  # nothing answered: look again later, the job keeps running
                next_poll = time.monotonic() + next(intervals)
                sleep(max(0.05, min(log_every_s, next_poll - time.monotonic())))
                continue
            status = answer.get(job_id) or JobStatus(job_id, "PENDING", reason="not yet listed")
            if status.state != last_state:
                on_state(status)
                last_state = status.state
                intervals = backoff_intervals(cap_s=poll_cap_s)  # a change: look again soon
            if status.terminal:
                break
            next_poll = time.monotonic() + next(intervals)
        sleep(max(0.05, min(log_every_s, next_poll - time.monotonic())))
    # The last lines can reach the shared file system after the state changed.
    sleep(min(log_every_s, 1.0))
    for line in follower.flush():
        on_line(line)
    return WatchResult(status, log_file, follower.tail_text(), stopped, detected_at)
