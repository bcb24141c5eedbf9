"""The Slurm client and job watcher against the real one-node cluster."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from peftpipe.backends import SlurmBackend, StageCommand
from peftpipe.failures import fatal_line
from peftpipe.paths import RunPaths
from peftpipe.slurm.client import SlurmClient
from peftpipe.slurm.render import JobRequest, render_batch_script
from peftpipe.slurm.watch import backoff_intervals, watch_job
from peftpipe.validation import load_spec
from tests.conftest import write_spec

pytestmark = pytest.mark.slurm


def shell_job(tmp_path: Path, name: str, program: list[str]) -> Path:
    script = tmp_path / f"{name}.sbatch"
    script.write_text(render_batch_script(JobRequest(job_name=f"peftpipe-test-{name}",
                                                     output=tmp_path / f"{name}-%j.out", program=program,
                                                     mem="256M", time_limit="00:10:00", signal_lead_s=30)))
    return script


def wait_terminal(client: SlurmClient, job_id: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.status([job_id]).get(job_id)
        if status is not None and status.terminal:
            return status.state
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s")


def test_backoff_starts_at_two_seconds_and_stops_at_the_cap() -> None:
    intervals = backoff_intervals(cap_s=30)
    assert [next(intervals) for _ in range(7)] == [2, 4, 8, 16, 30, 30, 30]


def test_failed_job_reports_state_exit_code_and_log_tail(tmp_path: Path, slurm_cluster: str) -> None:
    loaded = load_spec(write_spec(tmp_path, {"execution.backend": "slurm",
                                             "execution.slurm": {"mem": "1G", "cpus_per_task": 1}}))
    paths = RunPaths(tmp_path / "runs" / "exit-three")
    command = StageCommand("finetune", 1, ["-c", "print('loading shards'); import sys; sys.exit(3)"])
    lines: list[str] = []
    outcome = SlurmBackend().run(loaded, paths, command, on_line=lines.append)
    assert (outcome.state, outcome.exit_code) == ("FAILED", 3)
    assert "loading shards" in outcome.log_tail
    assert paths.job_id_file("finetune", 1).read_text().strip() == outcome.job_id
    assert outcome.log_file == paths.attempt_dir("finetune", 1) / f"slurm-{outcome.job_id}.out"
    assert any("FAILED" in line and "exit code 3" in line for line in lines)


def test_a_failed_stage_never_starts_the_next(tmp_path: Path, slurm_cluster: str) -> None:
    client = SlurmClient()
    first = client.submit(shell_job(tmp_path, "stage1", ["bash", "-c", "echo stage one; exit 3"]))
    second = client.submit(shell_job(tmp_path, "stage2", ["bash", "-c", "echo stage two ran"]), dependency=[first])
    assert wait_terminal(client, first) == "FAILED"
    assert wait_terminal(client, second) == "CANCELLED"
    assert not list(tmp_path.glob("stage2-*.out")), "stage 2 must never have started"


def test_first_oom_line_cancels_the_job_at_once(tmp_path: Path, slurm_cluster: str) -> None:
    client = SlurmClient()
    oom = "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    job_id = client.submit(shell_job(tmp_path, "oom", ["bash", "-c", f"echo '{oom}'; sleep 300"]))
    started = time.monotonic()
    result = watch_job(client, job_id, tmp_path / f"oom-{job_id}.out", stop_rule=fatal_line)
    assert time.monotonic() - started < 30, "the job should be cancelled, not left to sleep"
    assert result.status.state == "CANCELLED"
    assert result.stopped_early == oom.removeprefix("[rank1]: ")
    assert job_id not in client.queued_jobs("peftpipe-test-oom")


def test_one_sacct_call_answers_for_many_jobs(tmp_path: Path, slurm_cluster: str) -> None:
    client = SlurmClient()
    jobs = [client.submit(shell_job(tmp_path, f"many{i}", ["true"])) for i in range(3)]
    for job in jobs:
        wait_terminal(client, job)
    before = len(client.calls)
    statuses = client.status(jobs)
    assert [c for _, c in client.calls[before:]] == ["sacct"]
    assert {s.state for s in statuses.values()} == {"COMPLETED"}


def test_host_oom_raises_mem_once_within_the_partition_limit(tmp_path: Path, slurm_cluster: str) -> None:
    from peftpipe.attempts import FinetuneGaveUp, first_attempt, run_attempts
    from peftpipe.results import StageFailed, TrainResult

    # Holds 1.5 GB for a few seconds: more than the first attempt's --mem=1G, less than 2G.
    program = ["-c", "import time; held = b'x' * (1500 * 2**20); time.sleep(6); print('held 1.5 GB')"]

    def attempts(max_mem: str, run_id: str) -> list:
        loaded = load_spec(write_spec(tmp_path / run_id, {"execution.backend": "slurm", "execution.slurm": {
            "mem": "1G", "max_mem": max_mem, "cpus_per_task": 1, "poll_max_interval_s": 4}}))
        paths = RunPaths(tmp_path / "runs" / run_id)
        records: list = []

        def run_one(settings):
            command = StageCommand("finetune", settings.attempt, program, mem=settings.mem)
            outcome = SlurmBackend().run(loaded, paths, command, stop_rule=fatal_line)
            if not outcome.succeeded:
                raise StageFailed("finetune", outcome)
            assert "held 1.5 GB" in outcome.log_tail
            return TrainResult(0, 0.0, None, 0.0, 0.0, settings.micro_batch_size, str(outcome.log_file),
                               outcome.job_id, outcome.started_at)

        run_attempts(loaded.spec, first_attempt(loaded.spec), run_one, on_records=lambda r: records.__setitem__(
            slice(None), r))
        return records

    records = attempts("3G", "host-oom")
    assert [(r.kind, r.mem) for r in records] == [("host_oom", "1G"), ("none", "2G")]
    assert "Exceeded job memory limit" in records[0].evidence or "exceeded memory limit" in records[0].evidence

    with pytest.raises(FinetuneGaveUp, match=r"host memory exhausted at 1 GB \(limit 1 GB\); it needed more than 1 GB"):
        attempts("1G", "host-oom-capped")
