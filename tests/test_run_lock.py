"""Two runs with the same run id at once: the second is refused and the first trains alone."""

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


def test_second_run_with_the_same_run_id_is_refused_while_the_first_trains(
        tmp_path: Path, hub_endpoint: str, prefect_api) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.finetune import finetune

    workdir = tmp_path / "runs"
    spec = write_spec(tmp_path, {"workdir": str(workdir), "artifacts.store": f"file://{tmp_path / 'store'}",
                                 "train.max_steps": 5000, "train.checkpoint_every": 10000,
                                 "model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache")})
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    argv = [sys.executable, "-m", "peftpipe", "run", str(spec), "--run-id", "twice"]
    metrics = workdir / "twice" / "finetune" / "metrics.jsonl"
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert time.monotonic() < deadline and first.poll() is None, "the first run never trained"
            time.sleep(0.2)
        state = finetune(spec_path=str(spec), run_id="twice", return_state=True)
        assert state.is_failed()
        message = str(state.result(raise_on_failure=False))
        assert f"run twice is already running in {workdir / 'twice'} (process {first.pid} on" in message, message
        assert "choose another --run-id" in message
        assert first.poll() is None, "the first run must go on"
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=120)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)), "one trainer only: every step once, in order"
