"""Log lines logged while the Prefect server is down reach the flow-run log once it is back: a real
server stopped and started again under a running `peftpipe run`, nothing missing between the job log
and the flow-run log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tests.conftest import write_spec
from tests.prefect_stack import OwnServer

STEP = re.compile(r"^step (\d+)/")


def flow_run_messages(server: OwnServer, flow_run_id: str) -> list[str]:
    messages: list[str] = []
    while True:
        rows = server.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                   "limit": 200, "offset": len(messages)})
        messages += [row["message"] for row in rows]
        if len(rows) < 200:
            return messages


def flow_run_id_of(server: OwnServer, run_id: str) -> str:
    rows = server.api("POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": [run_id]}}})
    assert len(rows) == 1, rows
    return rows[0]["id"]


def logged_after(server: OwnServer, flow_run_id: str, moment: str) -> bool:
    """Whether the flow-run log holds a line stamped after ``moment`` (one cheap query)."""
    return bool(server.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]},
                                                             "timestamp": {"after_": moment}}, "limit": 1}))


def steps_logged(server: OwnServer, flow_run_id: str) -> list[int]:
    return [int(match.group(1)) for message in flow_run_messages(server, flow_run_id)
            if (match := STEP.match(message))]


def test_lines_logged_during_a_server_outage_reach_the_flow_run_log(own_prefect_server: OwnServer,
                                                                    hub_endpoint: str, tmp_path: Path) -> None:
    server = own_prefect_server
    spec = write_spec(tmp_path, {"model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
                                 "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{tmp_path / 'store'}",
                                 "train.max_steps": 1_000_000, "train.checkpoint_every": 1_000_000})
    run_id = f"log-outage-{os.getpid()}"
    # The client gives up on a request after about 2 s instead of about a minute: the outage below
    # (the server's restart takes longer) is then as long as one past the default retries.
    env = {**server.env, "PREFECT_CLIENT_MAX_RETRIES": "1"}
    output = tmp_path / "peftpipe-run.log"
    with output.open("w") as out:
        run = subprocess.Popen([sys.executable, "-m", "peftpipe", "run", str(spec), "--run-id", run_id], env=env,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "step 1/" not in output.read_text():
            assert run.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        flow_run_id = flow_run_id_of(server, run_id)
        server.stop()  # down while the fine-tune streams its lines
        time.sleep(3)
        server.start()
        restarted, moment = time.monotonic(), datetime.now(timezone.utc).isoformat()
        last_before = max(int(m) for m in re.findall(r"step (\d+)/", output.read_text()))
        # The run carries on; wait until the flow-run log holds lines logged after the restart (the
        # lines held in the outage are sent before them).
        while not logged_after(server, flow_run_id, moment):
            assert run.poll() is None and time.monotonic() - restarted < 120, output.read_text()[-3000:]
            time.sleep(1)
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    job_log = tmp_path / "runs" / run_id / "finetune" / "attempt-1" / "output.log"
    in_job_log = [int(m.group(1)) for line in job_log.read_text().splitlines() if (m := STEP.match(line))]
    logged = steps_logged(server, flow_run_id)
    missing = sorted(set(range(1, max(logged) + 1)) - set(logged))
    print(f"steps 1..{max(logged)} in the flow-run log, {len(missing)} missing; job log to step {max(in_job_log)}")
    assert not missing, f"{len(missing)} step lines missing from the flow-run log: {missing[:20]}..."
    assert max(logged) > last_before and set(logged) <= set(in_job_log)
    messages = flow_run_messages(server, flow_run_id)
    assert any("log lines held meanwhile were sent then" in message for message in messages), messages[-20:]
    assert "Error logging to API" not in output.read_text()


STILL_DOWN = """
import logging, sys, uuid
from pathlib import Path
import flows.log_shipping
from flows.log_shipping import keep_unsent_lines_in, note, send_log
flows.log_shipping.MAX_HELD_LINES = 3  # the oldest two spill to the file at once, the rest at exit
flow_run_id = str(uuid.uuid4())
keep_unsent_lines_in(flow_run_id, Path(sys.argv[1]))
for number in range(5):
    send_log(note(flow_run_id, logging.INFO, f"line {number}"))
print("logged", flush=True)
"""


def test_lines_never_taken_before_the_process_ends_go_to_the_run_directory(tmp_path: Path) -> None:
    """The API is down (nothing listens on its port) until the process ends: the lines are not lost
    silently, they are in the run directory's file, in order, and stderr says so."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections are refused, as from a stopped server
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_CLIENT_MAX_RETRIES": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    unsent = tmp_path / "runs" / "r1" / "flow-run-log.unsent.txt"
    done = subprocess.run([sys.executable, "-c", STILL_DOWN, str(unsent)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stdout + done.stderr
    lines = unsent.read_text().splitlines()
    assert [line.rsplit(" - ", 1)[1] for line in lines] == [f"line {number}" for number in range(5)]
    assert "5 log lines of flow run" in done.stderr and str(unsent) in done.stderr, done.stderr
    assert "over 3 log lines held for the Prefect API; the oldest 2" in done.stderr, done.stderr
