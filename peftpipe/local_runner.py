"""Run a stage's command as a local subprocess, streaming its output to a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftpipe.interrupts import raise_if_interrupted
from peftpipe.secret_env import without_credentials



@dataclass(frozen=True)
class ProcessResult:
    exit_code: int
    log_file: Path
    log_tail: str
    stopped_early: str | None = None  # the line that made the runner stop the process group
    detected_at: float | None = None


def job_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment less credentials: they are for the processes that download and upload."""
    env = without_credentials(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_logged(argv: list[str], log_file: Path, on_line: Callable[[str], None] = lambda line: None,
               tail_lines: int = 60, stop_rule: Callable[[str], str | None] | None = None,
               grace_s: float = 10.0) -> ProcessResult:
    """Run ``argv``; every output line goes to ``log_file`` and ``on_line``.

    The child runs in its own process group; if this process is interrupted, the whole group
    is terminated so no training process outlives its orchestrator. When ``stop_rule`` returns
    evidence for a line (an OOM on one rank), the group is stopped at once instead of waiting
    for the other ranks to notice.
    """
    stopped: str | None = None
    detected_at: float | None = None
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    with log_file.open("a", encoding="utf-8") as log:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=job_environment(),
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                raise_if_interrupted()
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                on_line(line.rstrip("\n"))
                if stop_rule is not None and stopped is None:
                    stopped = stop_rule(line.rstrip("\n"))
                    if stopped is not None:
                        detected_at = time.time()
                        _signal_group(process, signal.SIGTERM)
                        killer = threading.Timer(grace_s, _signal_group, (process, signal.SIGKILL))
                        killer.daemon = True
                        killer.start()
            exit_code = process.wait()
        except BaseException:
            terminate_group(process)
            raise
    return ProcessResult(exit_code, log_file, "\n".join(tail), stopped, detected_at)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass


def terminate_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the child's process group (training checkpoints on it), then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
