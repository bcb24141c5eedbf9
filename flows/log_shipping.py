"""Flow-run log lines that survive a Prefect API outage.

Prefect's ``APILogWorker`` sends log lines in batches; when a batch fails (the client's own retries,
about a minute by default, ran out while the server was down) it prints ``--- Error logging to API
---`` to stderr and drops the batch: the lines logged during the outage, and those batched just
before it, are missing from the flow-run log for good, without a word there.

:class:`ResendingLogWorker` keeps a failed batch and sends it again, before the next one, once the
API answers; the lines keep their own timestamps, so the flow-run log reads in order, and one line
says how many came late. What cannot be held (past :data:`MAX_HELD_LINES`, or still unsent when the
process ends) goes to a local file, the run directory's when the flow named one, and the flow-run
log (or stderr, at exit) says how many lines and where.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.schemas.actions import LogCreate
from prefect.logging.handlers import APILogWorker, set_api_log_sink
from prefect.settings import PREFECT_HOME

# About 30 MB of typical lines; an outage that outlasts it spills the oldest to the local file.
MAX_HELD_LINES = 100_000
_local_logs: dict[str, Path] = {}
_local_logs_lock = threading.Lock()


def hold_logs_through_outages() -> None:
    """Route this process's flow-run log lines through :class:`ResendingLogWorker` (idempotent)."""
    set_api_log_sink(send_log)


def send_log(log: dict[str, Any]) -> None:
    ResendingLogWorker.instance().send(log)


def keep_unsent_lines_in(flow_run_id: UUID | str | None, path: Path) -> None:
    """Where the lines of ``flow_run_id`` go that the API never took (default: under PREFECT_HOME)."""
    if flow_run_id:
        with _local_logs_lock:
            _local_logs[str(flow_run_id)] = path


def local_log(flow_run_id: str) -> Path:
    with _local_logs_lock:
        known = _local_logs.get(flow_run_id)
    return known or PREFECT_HOME.value() / "unsent-logs" / f"flow-run-{flow_run_id}.log"


class ResendingLogWorker(APILogWorker):
    """An ``APILogWorker`` that holds a batch the API did not take and sends it again with the next."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._held: list[dict[str, Any]] = []
        self._outage_since: float | None = None
        self._spilled: dict[str, int] = {}  # flow run id -> lines written to its local file
        self._resent: dict[str, int] = {}  # flow run id -> lines sent since the outage began

    async def _handle_batch(self, items: list[dict[str, Any]]) -> None:
        self._held.extend(items)
        if len(self._held) > MAX_HELD_LINES:
            overflow, self._held = self._held[:-MAX_HELD_LINES], self._held[-MAX_HELD_LINES:]
            for flow_run_id, count in write_local(overflow).items():
                self._spilled[flow_run_id] = self._spilled.get(flow_run_id, 0) + count
                sys.stderr.write(f"peftpipe: over {MAX_HELD_LINES} log lines held for the Prefect API; the oldest"
                                 f" {count} of flow run {flow_run_id} are in {local_log(flow_run_id)}\n")
        await self._try_send()

    async def _try_send(self) -> bool:
        """Send what is held; on failure keep it (and say so once); after an outage, say what came late."""
        try:
            await self._send_held()
        except Exception as error:  # the API is down or refuses: hold the lines
            if self._outage_since is None:
                self._outage_since = time.time()
                sys.stderr.write(f"peftpipe: the Prefect API did not take {len(self._held)} log lines"
                                 f" ({type(error).__name__}: {error}); they are held and sent when it answers\n")
            return False
        if self._outage_since is not None or self._spilled:
            notes = self._recovery_notes()
            if notes:
                await self._client.create_logs(notes)
            self._outage_since = None
            self._spilled = {}
        return True

    async def _send_held(self) -> None:
        """Send the held lines in batches of the usual size, forgetting each batch once it is taken."""
        while self._held:
            batch = next(batches(self._held, self.max_batch_size))
            await self._client.create_logs(batch)
            del self._held[:len(batch)]
            if self._outage_since is not None:
                for item in batch:
                    key = str(item.get("flow_run_id"))
                    self._resent[key] = self._resent.get(key, 0) + 1

    def _recovery_notes(self) -> list[dict[str, Any]]:
        since = dt.datetime.fromtimestamp(self._outage_since or time.time(), dt.timezone.utc)
        resent, self._resent = self._resent, {}
        notes = []
        for flow_run_id in sorted(set(resent) | set(self._spilled)):
            if flow_run_id == "None":
                continue
            message = (f"the Prefect API did not take log lines from {since:%H:%M:%S} UTC until it answered again;"
                       f" {resent.get(flow_run_id, 0)} log lines held meanwhile were sent then (in place by their"
                       " timestamps)")
            if self._spilled.get(flow_run_id):
                message += (f"; {self._spilled[flow_run_id]} more could not be held and are in"
                            f" {local_log(flow_run_id)}")
            notes.append(note(flow_run_id, logging.WARNING, message))
        return notes

    @asynccontextmanager
    async def _lifespan(self) -> Any:
        async with super()._lifespan():
            try:
                yield
            finally:
                # The service stops (the process ends): one last try, then the local file.
                if self._held and not await self._try_send():
                    for flow_run_id, count in write_local(self._held).items():
                        count += self._spilled.get(flow_run_id, 0)
                        sys.stderr.write(f"peftpipe: {count} log lines of flow run {flow_run_id} never reached"
                                         f" the Prefect API; they are in {local_log(flow_run_id)}\n")
                    self._held = []


def batches(items: list[dict[str, Any]], max_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive runs of ``items`` of at most ``max_bytes`` of JSON each (at least one item)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for item in items:
        item_size = len(json.dumps(item))
        if batch and size + item_size > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def note(flow_run_id: str, level: int, message: str) -> dict[str, Any]:
    return LogCreate(flow_run_id=UUID(flow_run_id), name="peftpipe.log_shipping", level=level,
                     timestamp=dt.datetime.now(dt.timezone.utc), message=message).model_dump(mode="json")


def write_local(items: list[dict[str, Any]]) -> dict[str, int]:
    """Append ``items`` to their flow runs' local files as log text; how many went to each."""
    lines: dict[str, list[str]] = {}
    for item in items:
        lines.setdefault(str(item.get("flow_run_id")), []).append(
            f"{item.get('timestamp')} {logging.getLevelName(item.get('level', logging.INFO))} {item.get('name')}"
            f" - {item.get('message')}\n")
    for flow_run_id, text in lines.items():
        path = local_log(flow_run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.writelines(text)
    return {flow_run_id: len(text) for flow_run_id, text in lines.items()}
