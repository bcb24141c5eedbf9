"""`peftpipe run` as a user runs it: summary table, UI address, and resume after a killed trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_spec

pytestmark = pytest.mark.e2e


def training_pids(config_file: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"peftpipe.engines.hf.train" in cmdline and str(config_file).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def test_run_killed_trainer_then_rerun_resumes(tmp_path: Path, hub_endpoint: str) -> None:
    workdir = tmp_path / "runs"
    spec = write_spec(tmp_path, {"workdir": str(workdir), "artifacts.store": f"file://{tmp_path / 'store'}",
                                 "train.max_steps": 40, "train.checkpoint_every": 5,
                                 "model.cache_dir": str(tmp_path / "hf-cache")})
    env = {**os.environ, "HF_ENDPOINT": hub_endpoint, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    argv = [sys.executable, "-m", "peftpipe", "run", str(spec), "--run-id", "resume-me"]
    run_dir = workdir / "resume-me"
    config_file = run_dir / "finetune" / "attempt-1" / "config.json"

    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "finetune" / "checkpoints" / "step-0000010").exists():
        assert time.monotonic() < deadline and first.poll() is None, first.stdout.read() if first.poll() else "timeout"
        time.sleep(0.05)
    for pid in training_pids(config_file):
        os.kill(pid, signal.SIGKILL)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 1, output
    assert "finetune failed: process ended with exit code -9" in output
    assert "Failed" in output  # the summary table shows the failed stage

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    summary = json.loads((run_dir / "finetune" / "train_summary.json").read_text())
    assert summary["final_step"] == 40
    assert summary["resumed_from_step"] >= 10
    table = second.stdout
    for stage in ("fetch-model", "prepare-data", "finetune-attempt1-mbs4", "evaluate", "publish"):
        assert stage in table
    assert f"step 40, loss" in table and f"resumed from {summary['resumed_from_step']}" in table
    assert "/runs/flow-run/" in table
    # The spec's first published run scored the base model too: base vs adapter with the delta, per metric.
    assert "base model vs adapter on the same" in table
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert f"{metrics['delta']['loss']:+.4f}" in table and f"{metrics['baseline']['loss']:.4f}" in table
    assert (tmp_path / "store" / "resume-me" / "manifest.json").is_file()
