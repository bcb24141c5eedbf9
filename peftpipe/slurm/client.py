"""The Slurm command-line client: sbatch, sacct (squeue while accounting lags), scancel.

Every call is an argument list run without a shell, in an environment without secrets, and
is counted so that the load a run puts on the controller can be measured.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from peftpipe.local_runner import job_environment

ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"})
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                             "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})


class SlurmError(RuntimeError):
    """A Slurm command failed; the message has the command and what it printed."""


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    raw_state: str = ""
    nodes: str = ""  # sacct's NodeList ("None assigned" while pending)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """sacct's ``3:0`` (exit code : signal)."""
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def parse_sacct(output: str) -> dict[str, JobStatus]:
    """Rows of ``sacct -X -n -P -o JobID,State,ExitCode,Reason,NodeList``."""
    statuses: dict[str, JobStatus] = {}
    for row in output.splitlines():
        parts = row.split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        job_id, raw_state, exit_text = parts[0], parts[1], parts[2]
        reason = parts[3] if len(parts) > 3 else ""
        nodes = parts[4] if len(parts) > 4 and parts[4] != "None assigned" else ""
        exit_code, sig = parse_exit_code(exit_text)
        # "CANCELLED by 0" -> CANCELLED
        statuses[job_id] = JobStatus(job_id, raw_state.split(" ")[0].upper(), exit_code, sig, reason, raw_state,
                                     nodes)
    return statuses


def parse_squeue(output: str) -> dict[str, JobStatus]:
    """Rows of ``squeue -h -o %i|%T|%r``."""
    statuses: dict[str, JobStatus] = {}
    for row in output.splitlines():
        parts = row.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            statuses[parts[0]] = JobStatus(parts[0], parts[1].upper(), reason=parts[2] if len(parts) > 2 else "",
                                           raw_state=parts[1])
    return statuses


@dataclass
class SlurmClient:
    """Thin, counted wrappers around the Slurm commands the pipeline needs."""

    command_timeout_s: float = 60.0
    calls: list[tuple[float, str]] = field(default_factory=list)

    def run_command(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one Slurm command; :class:`SlurmError` when it is missing, hangs or (with ``check``) fails."""
        self.calls.append((time.monotonic(), argv[0]))
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=self.command_timeout_s,
                                    env=job_environment())
        except FileNotFoundError as error:
            raise SlurmError(f"{argv[0]} is not installed on this machine; run the flow where Slurm's"
                             " commands are (a login node)") from error
        except subprocess.TimeoutExpired as error:
            raise SlurmError(f"{' '.join(argv)} did not answer within {self.command_timeout_s:.0f} s") from error
        if check and result.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} failed with exit code {result.returncode}: "
                             f"{(result.stderr or result.stdout).strip()}")
        return result

    def submit(self, script: Path, dependency: Iterable[str] = ()) -> str:
        """``sbatch --parsable``; with ``dependency`` the job starts only after those end well."""
        argv = ["sbatch", "--parsable"]
        after = [str(job) for job in dependency]
        if after:
            argv.append("--dependency=afterok:" + ":".join(after))
        argv.append(str(script))
        output = self.run_command(argv).stdout.strip()
        job_id = output.split(";")[0]  # "<id>;<cluster>" on federated clusters
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed {output!r} instead of a job id")
        return job_id

    def status(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        """States of many jobs in one ``sacct`` call; ``squeue`` for those accounting does not know yet."""
        ids = [str(job) for job in job_ids]
        if not ids:
            return {}
        statuses = parse_sacct(self.run_command(["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode,Reason,NodeList",
                                          "-j", ",".join(ids)]).stdout)
        missing = [job for job in ids if job not in statuses]
        if missing:
            # A just-submitted job can be missing from accounting for a moment; the queue has it.
            result = self.run_command(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(missing)], check=False)
            statuses.update({k: v for k, v in parse_squeue(result.stdout).items() if k in missing})
        return {job: statuses[job] for job in ids if job in statuses}

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = [str(job) for job in job_ids]
        if ids:
            self.run_command(["scancel", *ids], check=False)

    def queued_jobs(self, name_prefix: str) -> list[str]:
        """Ids of queued or running jobs whose name starts with ``name_prefix``."""
        output = self.run_command(["squeue", "-h", "-o", "%i|%j"]).stdout
        rows = (line.strip().split("|", 1) for line in output.splitlines() if "|" in line)
        return [job for job, name in rows if name.startswith(name_prefix)]

    def cancel_named(self, name_prefix: str) -> list[str]:
        """Cancel every queued or running job whose name starts with ``name_prefix``."""
        jobs = self.queued_jobs(name_prefix)
        self.cancel(jobs)
        return jobs
