"""What a person sees after ``peftpipe run``: task runs of the flow run, read back from Prefect."""

from __future__ import annotations

import time
from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL


@dataclass(frozen=True)
class StageRow:
    name: str
    state: str
    duration_s: float | None


FINAL_STATES_WAIT_S = 30.0


def stage_rows(flow_run_id: UUID, wait_s: float = FINAL_STATES_WAIT_S) -> list[StageRow]:
    """The flow run's task runs in start order, each in its final state.

    Task run states reach the API as events, recorded by the server a moment later: read right
    after the flow returned, the last stages still showed Running or no state in a Completed
    run. So this reads again (up to ``wait_s``) until every task run's state is final.
    """
    deadline = time.monotonic() + wait_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            )
        if all(run.state is not None and run.state.is_final() for run in runs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return [
        StageRow(
            run.name,
            run.state.name if run.state else "Unknown",
            (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else None,
        )
        for run in runs
    ]


def flow_run_url(flow_run_id: UUID) -> str:
    """The flow run's page in the Prefect UI (with the ephemeral API, after `prefect server start`)."""
    ui = PREFECT_UI_URL.value() if PREFECT_API_URL.value() else None
    base = ui or "http://127.0.0.1:4200"
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"
