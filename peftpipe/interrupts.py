"""Ctrl-C that cannot be lost.

Python raises KeyboardInterrupt wherever the main thread happens to be; a library that catches
BaseException there (a logging or API-client call of the orchestrator, say) swallows it, and the
run then carries on with its Slurm job, as if Ctrl-C had never been pressed (seen once in CI: the
job ran to completion). While :func:`remembered_interrupts` is active, SIGINT is also recorded,
and the loops that wait on jobs call :func:`raise_if_interrupted`, so the interrupt surfaces again
at the next poll and the job is cancelled.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_interrupted = threading.Event()


def raise_if_interrupted() -> None:
    if _interrupted.is_set():
        raise KeyboardInterrupt


@contextmanager
def remembered_interrupts() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt as usual and is remembered until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = signal.getsignal(signal.SIGINT)

    def interrupted(signum: int, frame: Any) -> None:
        _interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted.clear()
