"""The end of `peftpipe run` tells the truth: Ctrl-C prints the exact resume command, and after an OOM retry
each attempt row shows its own outcome, step and loss, every stage its final state, then metrics and adapter."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.app import app  # noqa: F401 - the CLI under test imports cleanly
from tests.conftest import EXAMPLE_DATA

pytestmark = pytest.mark.e2e


def test_ctrl_c_prints_the_resume_command_and_the_resumed_run_reports_each_attempt(tmp_path: Path,
                                                                                    hub_root: Path) -> None:
    import shutil

    shutil.copy(EXAMPLE_DATA, tmp_path / "squad.json")
    spec = tmp_path / "spec.yaml"
    python = [sys.executable, "-m", "peftpipe"]
    subprocess.run([*python, "init", str(spec), "--model", str(hub_root / "peftpipe" / "tiny-llama"), "--format",
                    "squad", "--data", "squad.json"], check=True, capture_output=True, cwd=tmp_path)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "250",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
           # attempt 1 (micro batch 4) runs out of memory after step 3; attempt 2 (micro batch 2) completes
           "PEFTPIPE_FAULT_OOM_ABOVE_MBS": "2", "PEFTPIPE_FAULT_OOM_FROM_STEP": "3"}
    argv = [*python, "run", str(spec), "--run-id", "summary", "--set", "train.max_steps=6",
            "--set", "train.checkpoint_every=2", "--set", "evaluation.max_records=4"]
    checkpoint = tmp_path / "runs" / "summary" / "finetune" / "checkpoints" / "step-0000002"

    first = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()[0]
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 130, output
    printed = re.search(r"Resume it from its latest checkpoint with:\s*\n\s*(peftpipe run .+)", output)
    assert printed, output
    # SIGINT reaches the trainer too, which saves a checkpoint where it stopped: the resumed run starts there.
    resumed = max(int(path.name.removeprefix("step-")) for path in checkpoint.parent.glob("step-*"))
    command = shlex.split(printed.group(1))
    assert command == ["peftpipe", *argv[3:]]  # the exact command: spec, run id and every --set

    second = subprocess.run([*python, *command[1:]], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=400)
    out = second.stdout
    assert second.returncode == 0, out + second.stderr
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in out.splitlines() if line.startswith("│")}
    assert rows["finetune-attempt1-mbs4"][0] == "Failed"
    assert re.fullmatch(rf"failed \(gpu_oom\) at step {max(3, resumed)}, loss \d+\.\d{{4}}; mbs 4 x accumulation 2",
                        rows["finetune-attempt1-mbs4"][2]), rows
    assert re.fullmatch(rf"completed step 6, loss \d+\.\d{{4}}; mbs 2 x accumulation 4, resumed from {resumed}",
                        rows["finetune-attempt2-mbs2"][2]), rows
    for stage in ("fetch-model", "prepare-data", "finetune-attempt2-mbs2", "evaluate", "publish"):
        assert rows[stage][0] == "Completed", rows
    assert re.search(r"metrics \(test split\): exact_match \d\.\d{3}, exact_match_normalized \d\.\d{3}, "
                     r"f1 \d\.\d{3}, loss \d+\.\d{3}", out), out
    adapter = re.search(r"adapter: file://(\S+)", out)
    assert adapter and (Path(adapter.group(1)) / "adapter_model.safetensors").is_file(), out
