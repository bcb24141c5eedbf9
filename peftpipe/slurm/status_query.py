"""Job states that survive an accounting or controller outage.

``sacct`` asks slurmdbd; while slurmdbd is down (a restart, a MariaDB hiccup) the controller
still knows every job it holds: ``squeue`` lists the live ones and ``scontrol show job`` the
ones that ended less than ``MinJobAge`` ago, with their exit code. When nothing answers, the
watcher waits with back-off and gives up only after ``status_outage_s``, never cancelling the
job: a job whose state cannot be read may still be training well, and a rerun re-attaches to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from peftpipe.slurm.client import JobStatus, SlurmClient, SlurmError, parse_exit_code, parse_squeue


class SlurmUnreachable(SlurmError):
    """No Slurm command told a job's state for longer than the outage limit; the job was left alone."""


def parse_scontrol_job(output: str) -> JobStatus | None:
    """One line of ``scontrol show job -o ID`` (``JobId=7 ... JobState=FAILED Reason=... ExitCode=3:0``)."""
    fields: dict[str, str] = {}
    for word in output.split():
        key, sep, value = word.partition("=")
        if sep and key not in fields:
            fields[key] = value
    if "JobId" not in fields or "JobState" not in fields:
        return None
    exit_code, sig = parse_exit_code(fields.get("ExitCode", ""))
    state = fields["JobState"].upper()
    nodes = fields.get("NodeList", "")
    return JobStatus(fields["JobId"], state, exit_code, sig, fields.get("Reason", ""), state,
                     "" if nodes == "(null)" else nodes)


def controller_status(client: SlurmClient, job_ids: list[str]) -> dict[str, JobStatus]:
    """States from the controller alone: ``squeue`` for live jobs, ``scontrol show job`` for the rest.

    Raises :class:`SlurmError` when the controller does not answer either.
    """
    result = client.run_command(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(job_ids)],
                                check=False)
    statuses = {k: v for k, v in parse_squeue(result.stdout).items() if k in job_ids} if result.returncode == 0 else {}
    errors = [] if result.returncode == 0 else [f"squeue: {(result.stderr or result.stdout).strip()}"]
    for job in job_ids:
        if job in statuses and not statuses[job].terminal:
            continue
        # squeue has no exit code; scontrol has it for jobs that ended within MinJobAge.
        shown = client.run_command(["scontrol", "show", "job", "-o", job], check=False)
        parsed = parse_scontrol_job(shown.stdout) if shown.returncode == 0 else None
        if parsed is not None:
            statuses[job] = parsed
        elif shown.returncode != 0:
            errors.append(f"scontrol show job {job}: {(shown.stderr or shown.stdout).strip()}")
    if not statuses and errors:
        raise SlurmError("; ".join(errors))
    return statuses


@dataclass
class ResilientStatus:
    """``sacct`` first, the controller when accounting fails, patience when both do.

    :meth:`query` returns None while no source can tell a job's state; once that has lasted
    ``give_up_after_s`` it raises :class:`SlurmUnreachable` with the last errors.
    """

    client: SlurmClient
    give_up_after_s: float = 1800.0
    on_note: Callable[[str], None] = lambda line: None
    clock: Callable[[], float] = time.monotonic
    outage_since: float | None = None
    degraded: bool = False
    last_errors: list[str] = field(default_factory=list)

    def query(self, job_ids: Iterable[str]) -> dict[str, JobStatus] | None:
        ids = [str(job) for job in job_ids]
        errors: list[str] = []
        statuses: dict[str, JobStatus] | None
        try:
            statuses = self.client.status(ids)
        except SlurmError as accounting:
            errors.append(str(accounting))
            try:
                statuses = controller_status(self.client, ids)
            except SlurmError as controller:
                errors.append(str(controller))
                statuses = None
            if statuses is not None and any(job not in statuses for job in ids):
                # Accounting is down and the controller has forgotten the job: its state is unknown.
                errors.append(f"the controller no longer lists job(s) {', '.join(j for j in ids if j not in statuses)}")
                statuses = None
        if statuses is None:
            return self._no_answer(ids, errors)
        if errors and not self.degraded:
            self.on_note(f"sacct failed ({_short(errors[0])}); reading job states from squeue/scontrol meanwhile")
        elif not errors and self.degraded:
            self.on_note("sacct answers again")
        if self.outage_since is not None:
            self.on_note(f"Slurm answers again after {self.clock() - self.outage_since:.0f} s without job states")
        self.degraded, self.outage_since = bool(errors), None
        return statuses

    def _no_answer(self, ids: list[str], errors: list[str]) -> None:
        now = self.clock()
        self.last_errors = errors
        if self.outage_since is None:
            self.outage_since = now
            self.on_note(f"no Slurm command could tell the state of job(s) {', '.join(ids)} ({_short('; '.join(errors))});"
                         f" the job is left running; retrying with back-off for up to {self.give_up_after_s:.0f} s")
        elif now - self.outage_since >= self.give_up_after_s:
            raise SlurmUnreachable(
                f"gave up watching Slurm job(s) {', '.join(ids)}: no state from sacct, squeue or scontrol for"
                f" {now - self.outage_since:.0f} s (execution.slurm.status_outage_s = {self.give_up_after_s:g});"
                f" the job was NOT cancelled. Run again with the same --run-id to re-attach to it once Slurm"
                f" answers. Last errors: {'; '.join(errors)}")
        return None


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
