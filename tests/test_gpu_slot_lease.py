"""GPU-job slots against a real Prefect server: a slot held across a server restart is freed when its
holder ends, and Ctrl-C while a run waits for a slot ends the process at once, leaking nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prefect_stack import SLURM, OwnServer, slurm_spec

HOLDER = """
import sys, time
from prefect.concurrency.sync import concurrency
with concurrency(sys.argv[2], occupy=1, lease_duration=60):
    print("holding", flush=True)
    while not __import__("os").path.exists(sys.argv[1]):
        time.sleep(0.2)
print("released", flush=True)
"""


def new_limit(server: OwnServer, name: str) -> str:
    name = f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    server.api("POST", "/v2/concurrency_limits/", {"name": name, "limit": 1})
    return name


def wait_for_slots(server: OwnServer, limit: str, count: int, why: str) -> None:
    deadline = time.monotonic() + 30
    while server.active_slots(limit) != count:
        assert time.monotonic() < deadline, why
        time.sleep(1)


def test_slot_held_across_a_server_restart_is_released(own_prefect_server: OwnServer, tmp_path: Path) -> None:
    server = own_prefect_server
    limit = new_limit(server, "peftpipe-test-gpu-jobs")
    done_file = tmp_path / "job-finished"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(done_file), limit], env=server.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert server.active_slots(limit) == 1
        server.stop()  # the server goes down while the GPU job holds its slot
        server.start()
        assert server.active_slots(limit) == 1, "the slot is still held by the running job"
        done_file.touch()  # the job ends; its holder leaves the slot
        output, _ = holder.communicate(timeout=120)
        assert "released" in output, output
        wait_for_slots(server, limit, 0, "the slot leaked: active_slots stays 1 with no job")
    finally:
        if holder.poll() is None:
            holder.kill()


@pytest.mark.slurm
def test_ctrl_c_while_waiting_for_a_gpu_slot_exits_at_once(own_prefect_server: OwnServer, hub_endpoint: str,
                                                           slurm_cluster: str, tmp_path: Path) -> None:
    """Before: "Crashed", the resume command, then a hang at interpreter exit until a second Ctrl-C
    (Prefect's acquisition service kept retrying for a slot and its drain waited for that)."""
    server = own_prefect_server
    limit = new_limit(server, "peftpipe-test-ctrl-c")
    other_job = server.api("POST", "/v2/concurrency_limits/increment-with-lease",
                           {"names": [limit], "slots": 1, "mode": "concurrency", "lease_duration": 900})
    assert server.active_slots(limit) == 1  # another run's GPU job holds the only slot
    spec = slurm_spec(tmp_path, hub_endpoint, **{"execution.slurm": {**SLURM, "gpu_job_limit": limit}})
    run_id = f"slot-ctrl-c-{os.getpid()}"
    log = tmp_path / "peftpipe-run.log"
    with log.open("w") as out:
        run = subprocess.Popen([sys.executable, "-m", "peftpipe", "run", str(spec), "--run-id", run_id],
                               env={**server.env, "HF_ENDPOINT": hub_endpoint}, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while f"waiting for a slot of the GPU-job limit {limit!r}" not in log.read_text():
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        time.sleep(2)  # well inside the wait: at least one refused attempt after the first
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
        interrupted = time.monotonic()
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 60 s after one Ctrl-C:\n{log.read_text()}") from None
        print(f"exited {time.monotonic() - interrupted:.1f} s after Ctrl-C")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    output = log.read_text()
    assert run.returncode == 130, output
    assert f"Resume it from its latest checkpoint with:\n  peftpipe run {spec} --run-id {run_id}" in output, output
    assert "failed to process item" not in output, output  # a full limit is waited out, not an error
    flow_runs = server.api("POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": [run_id]}}})
    assert [flow_run["state_type"] for flow_run in flow_runs] == ["CRASHED"]
    assert server.active_slots(limit) == 1, "only the other job's slot is held"
    assert not subprocess.run(["squeue", "-h", "-n", f"peftpipe-{run_id}-finetune"], capture_output=True,
                              text=True, check=True).stdout.strip(), "nothing was submitted"
    server.api("POST", "/v2/concurrency_limits/decrement-with-lease", {"lease_id": other_job["lease_id"]})
    wait_for_slots(server, limit, 0, "a slot leaked: the interrupted run's acquisition took it after all")
