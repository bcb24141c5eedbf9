"""One run at a time in a run directory.

Two processes given the same run id would train into one directory (interleaved metrics, a
checkpoint each overwrites). The run that starts first holds an exclusive ``flock`` on
``<run_dir>/.lock`` for its whole life; the kernel drops it when that process ends, however it
ends, so a rerun after a crash (or a killed login-node process whose Slurm job lives on) is
never locked out. The lock file names its holder for the message the second run gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".lock"


class RunDirectoryBusy(RuntimeError):
    """Another live process owns this run directory."""


@contextmanager
def run_directory_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process; :class:`RunDirectoryBusy` when another one holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_file = run_dir / LOCK_NAME
    handle = lock_file.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise RunDirectoryBusy(
                f"run {run_dir.name} is already running in {run_dir} ({_describe(holder)}); nothing was"
                " started. Wait for it to end (or stop it), or choose another --run-id.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"process {info['pid']} on {info['host']} since {info['since']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "held by another process"
