"""Where a stage's program runs: a local process group, or a Slurm job.

Both take the same :class:`StageCommand`, which an engine's ``job()`` builds (what follows the
interpreter, ranks per node, the Slurm job, the attempt's config files), and give the same
:class:`StageOutcome`, so stages and the retry loop do not care which it is.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peftpipe.local_runner import run_logged
from peftpipe.paths import RunPaths
from peftpipe.slurm.client import JobStatus, SlurmClient
from peftpipe.slurm.jobs import stage_job
from peftpipe.slurm.launch import distributed_program
from peftpipe.slurm.render import JobRequest, render_batch_script
from peftpipe.slurm.watch import watch_job
from peftpipe.spec import LoadedSpec

LineSink = Callable[[str], None]
StopRule = Callable[[str], "str | None"]


@dataclass(frozen=True)
class StageCommand:
    stage: str
    attempt: int
    script_args: list[str]  # what follows the interpreter: ["-m", module, ...] or [script.py, ...]
    ranks_per_node: int = 1
    gpus_per_node: int = 1
    nodes: int = 1
    mem: str | None = None
    model_path: Path | None = None
    # The Slurm job as the engine rendered it: `peftpipe render` prints the same one. None only for a
    # bare program (not an engine's stage): a plain job is built around script_args then.
    job: JobRequest | None = None
    # Files the attempt's program reads (its config), written by the backend just before it runs.
    files: dict[Path, str] = field(default_factory=dict)
    # What `peftpipe render --json` prints for this stage.
    described: dict[str, Any] = field(default_factory=dict)
    # The interpreter of a local run; None: this process's. An engine whose program lives in an
    # environment of its own (automodel: its venv) names that environment's python.
    python: str | None = None
    # Files of `files` that `peftpipe render` prints after the batch script (an engine's own config).
    shown: tuple[Path, ...] = ()

    def write_files(self) -> None:
        for path, text in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


@dataclass(frozen=True)
class StageOutcome:
    exit_code: int | None
    log_file: Path
    log_tail: str
    state: str | None = None  # Slurm's state; None for a local process
    job_id: str | None = None
    stopped_early: str | None = None
    detected_at: float | None = None
    started_at: float | None = None  # wall clock of the submission (or process start)
    reattached: bool = False

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.state in (None, "COMPLETED")


class Backend(Protocol):
    name: str

    def run(self, loaded: LoadedSpec, paths: RunPaths, command: StageCommand, on_line: LineSink = print,
            stop_rule: StopRule | None = None) -> StageOutcome: ...


class LocalBackend:
    """The stage's program as a process group on this machine (torchrun for several ranks)."""

    name = "local"

    def run(self, loaded: LoadedSpec, paths: RunPaths, command: StageCommand, on_line: LineSink = print,
            stop_rule: StopRule | None = None) -> StageOutcome:
        command.write_files()
        program, _, _ = distributed_program(command.python or sys.executable, command.script_args, 1,
                                            command.ranks_per_node, "torchrun")
        started = time.time()
        result = run_logged([str(word) for word in program], paths.stage_log(command.stage, command.attempt),
                            on_line, stop_rule=stop_rule)
        return StageOutcome(result.exit_code, result.log_file, result.log_tail, stopped_early=result.stopped_early,
                            detected_at=result.detected_at, started_at=started)


class SlurmBackend:
    """The stage's program as a Slurm job: rendered, submitted (or re-attached), watched, cancelled."""

    name = "slurm"

    def __init__(self, client: SlurmClient | None = None,
                 on_state: Callable[[JobStatus], None] | None = None):
        self.client = client or SlurmClient()
        self.on_state = on_state

    def run(self, loaded: LoadedSpec, paths: RunPaths, command: StageCommand, on_line: LineSink = print,
            stop_rule: StopRule | None = None) -> StageOutcome:
        stage, attempt = command.stage, command.attempt
        job_id, reattached, started = self._existing_job(paths, stage, attempt, on_line)
        if job_id is None:
            job = command.job or stage_job(
                loaded.spec, paths.run_id, paths, stage, attempt, command.script_args, host_python=sys.executable,
                gpus_per_node=command.gpus_per_node, nodes=command.nodes, mem=command.mem,
                model_path=command.model_path)
            command.write_files()
            script = paths.job_script(stage, attempt)
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(render_batch_script(job))
            started = time.time()
            job_id = self.client.submit(script)
            _write_atomically(paths.job_id_file(stage, attempt), job_id + "\n")
            on_line(f"submitted {stage} attempt {attempt} as Slurm job {job_id}")
        log_file = paths.attempt_dir(stage, attempt) / f"slurm-{job_id}.out"
        finished = False
        try:
            result = watch_job(self.client, job_id, log_file,
                               poll_cap_s=loaded.spec.execution.slurm.poll_max_interval_s,
                               on_line=on_line, on_state=self._state_logger(job_id, on_line), stop_rule=stop_rule)
            finished = True
        finally:
            if not finished:
                # Interrupted (Ctrl-C, flow cancellation): the job must not outlive its flow run.
                self.client.cancel([job_id])
                on_line(f"cancelled Slurm job {job_id}")
        status = result.status
        return StageOutcome(status.exit_code, log_file, result.log_tail, state=status.state, job_id=job_id,
                            stopped_early=result.stopped_early, detected_at=result.detected_at,
                            started_at=started, reattached=reattached)

    def _existing_job(self, paths: RunPaths, stage: str, attempt: int,
                      on_line: LineSink) -> tuple[str | None, bool, float | None]:
        """A job this attempt already submitted (the flow was restarted): watch it, never resubmit."""
        id_file = paths.job_id_file(stage, attempt)
        if not id_file.exists():
            return None, False, None
        job_id = id_file.read_text().strip()
        status = self.client.status([job_id]).get(job_id)
        if status is None:
            on_line(f"Slurm no longer knows job {job_id} of {stage} attempt {attempt}; submitting again")
            return None, False, None
        on_line(f"re-attaching to Slurm job {job_id} ({status.state}) of {stage} attempt {attempt}")
        return job_id, True, id_file.stat().st_mtime

    def _state_logger(self, job_id: str, on_line: LineSink) -> Callable[[JobStatus], None]:
        def log_state(status: JobStatus) -> None:
            detail = f", exit code {status.exit_code}" if status.terminal and status.exit_code is not None else ""
            reason = f" ({status.reason})" if status.reason and status.reason not in ("None", "") else ""
            on_line(f"Slurm job {job_id}: {status.state}{reason}{detail}")
            if self.on_state is not None:
                self.on_state(status)
        return log_state


def backend_for(loaded: LoadedSpec) -> Backend:
    return SlurmBackend() if loaded.spec.execution.backend == "slurm" else LocalBackend()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)
