"""A Prefect global concurrency slot around every GPU job, so a deployment cannot flood the queue."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.logging import get_run_logger

from peftpipe.interrupts import raise_if_interrupted
from peftpipe.spec import LoadedSpec

# Between two attempts: the server's Retry-After (its guess from how long slots are held, up to
# 30 s), at most MAX_RETRY_S so a freed slot is taken soon; DEFAULT_RETRY_S when it sends none.
DEFAULT_RETRY_S = 5.0
MAX_RETRY_S = 10.0
prefect_concurrency_log = logging.getLogger("prefect._internal.concurrency")


@contextmanager
def gpu_job_slot(loaded: LoadedSpec) -> Iterator[None]:
    """Hold one slot of the spec's global concurrency limit while a Slurm job is queued or running.

    Without a limit of that name (``prefect gcl create peftpipe-gpu-jobs --limit 4``) nothing
    is capped; local runs never take a slot.
    """
    execution = loaded.spec.execution
    if execution.backend != "slurm":
        yield
        return
    with ExitStack() as held:
        quiet = QuietRefusals()
        prefect_concurrency_log.addFilter(quiet)
        try:
            wait_for_slot(held, execution.slurm.gpu_job_limit)
        finally:
            prefect_concurrency_log.removeFilter(quiet)
        yield


def wait_for_slot(held: ExitStack, limit: str) -> None:
    """Enter ``concurrency(limit)`` on ``held``, waiting here, in this thread, while the limit is full.

    Prefect's own wait (``max_retries=None``) retries inside its acquisition service on the
    global event loop. Ctrl-C stops the caller but not that retry loop, and at interpreter exit
    Prefect drains the service, which waits until a slot frees (minutes, or for good): the
    process hung after "Crashed" until a second Ctrl-C. So each acquisition is one request
    (``max_retries=0``) and the waiting between requests is ours, a sleep that Ctrl-C ends at
    once with nothing left in flight.
    """
    waiting_since: float | None = None
    while True:
        try:
            held.enter_context(concurrency(limit, occupy=1, max_retries=0))
        except ConcurrencySlotAcquisitionError as error:
            full = error.__cause__
            if not (isinstance(full, httpx.HTTPStatusError) and refused(full)):
                raise
            if waiting_since is None:
                waiting_since = time.monotonic()
                get_run_logger().info(f"waiting for a slot of the GPU-job limit {limit!r}: all in use")
            pause(min(float(full.response.headers.get("Retry-After", DEFAULT_RETRY_S)), MAX_RETRY_S))
            continue
        if waiting_since is not None:
            get_run_logger().info(f"got a slot of {limit!r} after {time.monotonic() - waiting_since:.0f} s")
        return


def refused(error: BaseException | None) -> bool:
    """The server's "all slots in use" answer (423 Locked), as Prefect's client raises it."""
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code == 423


class QuietRefusals(logging.Filter):
    """Drops Prefect's ERROR line for each refused attempt ("Service ... failed to process item"):
    a full limit is what we wait out, not an error. Any other failure is still logged and raised."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        item = args[-1] if args else None
        future = item[-1] if isinstance(item, tuple) and item else None
        done = getattr(future, "done", None)
        return not (args and args[0] == "ConcurrencySlotAcquisitionWithLeaseService" and callable(done) and done()
                    and refused(future.exception()))  # type: ignore[union-attr]


def pause(seconds: float) -> None:
    """Sleep in short steps, so an interrupt a library swallowed still ends the wait at once."""
    deadline = time.monotonic() + max(seconds, 0.1)
    while (left := deadline - time.monotonic()) > 0:
        raise_if_interrupted()
        time.sleep(min(left, 0.5))
    raise_if_interrupted()
