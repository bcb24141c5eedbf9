"""The finetune flow with `execution: slurm`: every stage a real job on the one-node cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftpipe.slurm.client import SlurmClient
from tests.conftest import write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

SLURM = {"mem": "2G", "cpus_per_task": 1, "poll_max_interval_s": 2}


def unique(run_id: str) -> str:
    """Run ids (and so job names) unique per test session: sacct remembers earlier sessions' jobs."""
    return f"{run_id}-{os.getpid()}-{int(time.time()) % 100000}"


def slurm_spec(tmp_path: Path, hub_endpoint: str, **changes: object) -> Path:
    slurm = {**SLURM, **changes.pop("slurm", {})}  # type: ignore[dict-item]
    return write_spec(tmp_path, {"model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
                                 "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{tmp_path / 'store'}",
                                 "execution.backend": "slurm", "execution.slurm": slurm,
                                 "train.max_steps": 20, "train.checkpoint_every": 5, **changes})


SLURM_TINY = unique("slurm-tiny")
SLURM_EXIT_THREE = unique("slurm-exit-three")
SLURM_CTRL_C = unique("slurm-ctrl-c")
SLURM_REATTACH = unique("slurm-reattach")
SLURM_CANCEL = unique("slurm-cancel")
SLURM_LIMITED = unique("slurm-limited")


def sacct_rows(run_id: str, since: str = "now-1hour") -> list[dict[str, str]]:
    fields = "JobID,JobName,State,ExitCode,Elapsed,AllocTRES"
    output = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", fields], capture_output=True,
                            text=True, check=True).stdout
    rows = [dict(zip(fields.split(","), line.split("|"))) for line in output.splitlines()]
    return [row for row in rows if row["JobName"].startswith(f"peftpipe-{run_id}-")]


def test_tiny_run_every_stage_a_slurm_job(tmp_path: Path, hub_endpoint: str, slurm_cluster: str,
                                         prefect_api) -> None:
    from flows.finetune import finetune

    result = finetune(spec_path=str(slurm_spec(tmp_path, hub_endpoint)), run_id=SLURM_TINY)
    run_dir = Path(result["run_dir"])
    finetune_job = (run_dir / "finetune" / "attempt-1" / "job_id").read_text().strip()
    evaluate_job = (run_dir / "evaluate" / "attempt-1" / "job_id").read_text().strip()
    rows = {row["JobID"]: row for row in sacct_rows(SLURM_TINY)}
    print(json.dumps(list(rows.values()), indent=1))
    assert rows[finetune_job]["JobName"] == f"peftpipe-{SLURM_TINY}-finetune"
    assert rows[evaluate_job]["JobName"] == f"peftpipe-{SLURM_TINY}-evaluate"
    assert {rows[finetune_job]["State"], rows[evaluate_job]["State"]} == {"COMPLETED"}
    assert "gres/gpu=1" in rows[finetune_job]["AllocTRES"]
    assert result["train"]["final_step"] == 20 and result["metrics"]["records"] > 0
    script = (run_dir / "finetune" / "attempt-1" / "job.sbatch").read_text()
    assert f"#SBATCH --job-name=peftpipe-{SLURM_TINY}-finetune" in script
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "jobs/finetune/attempt-1.sbatch" in {o["key"] for o in manifest["objects"]}


def test_failed_job_fails_the_flow_with_state_exit_code_and_log_tail(tmp_path: Path, hub_endpoint: str,
                                                                  slurm_cluster: str, prefect_api) -> None:
    from flows.finetune import finetune

    spec = slurm_spec(tmp_path, hub_endpoint, slurm={"env": {"PEFTPIPE_FAULT_EXIT_CODE": "3"}})
    state = finetune(spec_path=str(spec), run_id=SLURM_EXIT_THREE, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "ended FAILED with exit code 3" in message
    assert "injected failure: exiting with code 3" in message  # the log tail
    assert "not retried" in message


def queued(run_id: str) -> list[str]:
    return SlurmClient().queued_jobs(f"peftpipe-{run_id}-")


def wait_for_running_job(run_id: str, process: subprocess.Popen, timeout_s: float = 240) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else "exited"
        output = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True).stdout
        for line in output.splitlines():
            job, name, state = line.split("|")
            if name == f"peftpipe-{run_id}-finetune" and state == "RUNNING":
                return job
        time.sleep(0.5)
    raise AssertionError("the fine-tune job never ran")


def cli(spec: Path, run_id: str, hub_endpoint: str) -> tuple[list[str], dict[str, str]]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "HF_ENDPOINT": hub_endpoint, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    return [sys.executable, "-m", "peftpipe", "run", str(spec), "--run-id", run_id], env


def test_ctrl_c_on_peftpipe_run_cancels_its_job(tmp_path: Path, hub_endpoint: str, slurm_cluster: str,
                                                prefect_api) -> None:
    argv, env = cli(slurm_spec(tmp_path, hub_endpoint, **{"train.max_steps": 2000}), SLURM_CTRL_C, hub_endpoint)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = wait_for_running_job(SLURM_CTRL_C, process)
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    while queued(SLURM_CTRL_C):
        assert time.monotonic() - interrupted < 30, f"job {job} still queued 30 s after Ctrl-C"
        time.sleep(0.5)
    assert f"cancelled Slurm job {job}" in output, output


def test_rerun_reattaches_to_the_running_job(tmp_path: Path, hub_endpoint: str, slurm_cluster: str,
                                             prefect_api) -> None:
    argv, env = cli(slurm_spec(tmp_path, hub_endpoint, **{"train.max_steps": 150}), SLURM_REATTACH, hub_endpoint)
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    job = wait_for_running_job(SLURM_REATTACH, first)
    os.killpg(first.pid, signal.SIGKILL)  # the login node's process dies; the job does not
    first.communicate(timeout=30)
    assert queued(SLURM_REATTACH) == [job]

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"re-attaching to Slurm job {job}" in second.stdout + second.stderr
    finetune_jobs = [row["JobID"] for row in sacct_rows(SLURM_REATTACH) if row["JobName"].endswith("-finetune")]
    assert finetune_jobs == [job], "the rerun must watch the same job, not submit a second one"


def test_cancelling_the_flow_run_cancels_its_jobs(tmp_path: Path, hub_endpoint: str, slurm_cluster: str,
                                                  prefect_api) -> None:
    """`prefect flow-run cancel` (or the UI's Cancel) on a deployment's run: no job left in the queue."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    spec = slurm_spec(tmp_path, hub_endpoint, **{"train.max_steps": 2000})
    _, env = cli(spec, SLURM_CANCEL, hub_endpoint)
    repo = Path(__file__).resolve().parents[1]
    serve = subprocess.Popen([sys.executable, "-c", "from flows.finetune import finetune; "
                              "finetune.serve(name='cancel-test', print_starting_message=False)"],
                             cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while True:
                try:
                    client.read_deployment_by_name("finetune/cancel-test")
                    break
                except Exception:
                    assert time.monotonic() < deadline and serve.poll() is None, "the deployment never appeared"
                    time.sleep(1)
            flow_run = run_deployment("finetune/cancel-test", timeout=0,
                                      parameters={"spec_path": str(spec), "run_id": SLURM_CANCEL})
            job = wait_for_running_job(SLURM_CANCEL, serve)
            asked = time.monotonic()
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
            while queued(SLURM_CANCEL):
                assert time.monotonic() - asked < 30, f"job {job} still queued 30 s after the cancellation"
                time.sleep(0.5)
            while not client.read_flow_run(flow_run.id).state.is_cancelled():
                assert time.monotonic() - asked < 120, client.read_flow_run(flow_run.id).state
                time.sleep(1)
        assert SlurmClient().status([job])[job].state == "CANCELLED"
    finally:
        serve.terminate()
        serve.communicate(timeout=60)


def test_gpu_job_limit_holds_submission_until_a_slot_frees(tmp_path: Path, hub_endpoint: str,
                                                          slurm_cluster: str, prefect_api) -> None:
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    from flows.finetune import finetune

    limit = "peftpipe-test-gpu-jobs"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    spec = slurm_spec(tmp_path, hub_endpoint, slurm={"gpu_job_limit": limit}, **{"train.max_steps": 5})
    holding, released = threading.Event(), []

    def other_run_holds_the_only_slot() -> None:
        with concurrency(limit, occupy=1):
            holding.set()
            time.sleep(20)
            released.append(time.time())

    other = threading.Thread(target=other_run_holds_the_only_slot)
    other.start()
    holding.wait(30)
    result = finetune(spec_path=str(spec), run_id=SLURM_LIMITED)
    other.join()
    run_dir = Path(result["run_dir"])
    # The run was ready to submit while the slot was still held, so the wait is the limit's doing.
    assert (run_dir / "data" / "stats.json").stat().st_mtime < released[0], "prepare-data ended after the release"
    submitted = (run_dir / "finetune" / "attempt-1" / "job_id").stat().st_mtime
    assert submitted >= released[0], "the job was submitted while the only GPU slot was taken"
