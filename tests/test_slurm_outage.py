"""Slurm outages while a job runs: accounting (slurmdbd) stopped, the controller unreachable, a rerun
after a failed or cancelled attempt. Real cluster, real slurmdbd (a private one, see slurm_outage.py)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from peftpipe.backends import SlurmBackend, StageCommand
from peftpipe.paths import RunPaths
from peftpipe.slurm.client import SlurmClient
from peftpipe.slurm.status_query import SlurmUnreachable
from peftpipe.validation import load_spec
from tests.conftest import write_spec
from tests.slurm_outage import private_accounting  # noqa: F401 - fixture

pytestmark = pytest.mark.slurm


def slurm_loaded(tmp_path: Path, **slurm: object):
    return load_spec(write_spec(tmp_path, {"execution.backend": "slurm", "execution.slurm": {
        "mem": "256M", "cpus_per_task": 1, "poll_max_interval_s": 2, **slurm}}))


def wait_for(lines: list[str], text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in list(lines)):
        assert time.monotonic() < deadline, f"never saw {text!r} in:\n" + "\n".join(lines)
        time.sleep(0.2)


def test_accounting_outage_leaves_a_healthy_job_running_to_completion(tmp_path: Path, private_accounting) -> None:
    """slurmdbd stops while the job runs; the job ends during the outage; the watcher still gets it right."""
    go = tmp_path / "go"
    program = ["-c", "import pathlib, sys, time\nprint('started', flush=True)\n"
               f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.2)\nprint('done after the outage')"]
    lines: list[str] = []

    def outage() -> None:
        private_accounting.stop()
        wait_for(lines, "sacct failed")  # the watcher met the outage and fell back to the controller
        go.touch()  # the job finishes while accounting is still down

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "started":
            threading.Thread(target=outage, daemon=True).start()

    paths = RunPaths(tmp_path / "runs" / "dbd-outage")
    outcome = SlurmBackend().run(slurm_loaded(tmp_path), paths, StageCommand("finetune", 1, program), on_line=on_line)
    print("\n".join(lines))
    assert (outcome.state, outcome.exit_code) == ("COMPLETED", 0), lines
    assert "done after the outage" in outcome.log_tail
    assert not any("cancelled Slurm job" in line for line in lines)
    assert any("reading job states from squeue/scontrol" in line for line in lines)
    private_accounting.start()
    assert SlurmClient().status([outcome.job_id])[outcome.job_id].state == "COMPLETED"  # accounting agrees


def test_no_answer_from_slurm_gives_up_in_time_without_cancelling_the_job(tmp_path: Path,
                                                                         private_accounting) -> None:
    """Accounting stopped and the controller unreachable: the watcher gives up, says why, keeps the job."""
    program = ["-c", "import time; print('started', flush=True); time.sleep(300)"]
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line.startswith("submitted finetune attempt 1"):
            private_accounting.stop()
            os.environ["SLURM_CONF"] = str(private_accounting.no_controller_conf)

    paths = RunPaths(tmp_path / "runs" / "no-slurm")
    loaded = slurm_loaded(tmp_path, status_outage_s=6)
    job_id = None
    try:
        with pytest.raises(SlurmUnreachable) as raised:
            SlurmBackend().run(loaded, paths, StageCommand("finetune", 1, program), on_line=on_line)
        message = str(raised.value)
        job_id = paths.job_id_file("finetune", 1).read_text().strip()
        assert "NOT cancelled" in message and "status_outage_s" in message and "--run-id" in message, message
        assert "Unable to contact slurm controller" in message or "Connection refused" in message, message
        assert any("the job is left running" in line for line in lines), lines
        os.environ["SLURM_CONF"] = str(private_accounting.slurm_conf)  # the controller is back
        shown = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True)
        assert shown.stdout.strip() in ("PENDING", "RUNNING"), f"the job must survive: {shown.stdout}"
    finally:
        os.environ["SLURM_CONF"] = str(private_accounting.slurm_conf)
        if job_id:
            SlurmClient().cancel([job_id])
