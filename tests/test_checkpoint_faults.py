"""Checkpoint faults of the hf engine, on the real training script (tiny model, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from peftpipe.engines.hf import command
from tests.test_hf_engine import make_run, run_script, script_argv


def test_truncated_checkpoint_falls_back_and_resuming_at_max_steps_writes_valid_json(tmp_path: Path,
                                                                                     hub_root: Path) -> None:
    paths, config, _ = make_run(tmp_path, hub_root)
    config.update(max_steps=4, checkpoint_every=2)
    first = run_script(command.TRAIN_MODULE, config, paths.stage_config("finetune"))
    assert first.returncode == 0, first.stdout + first.stderr
    checkpoints = paths.finetune_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000002", "step-0000004"]
    (checkpoints / "step-0000004" / "state.pt").write_bytes(b"")  # power loss: the name, not the bytes

    resumed = run_script(command.TRAIN_MODULE, config, paths.stage_config("finetune"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "checkpoint step-0000004 is damaged (state.pt has 0 bytes" in resumed.stdout
    assert "resuming from checkpoint step-0000002 (step 2)" in resumed.stdout
    summary = json.loads(paths.train_summary_file.read_text())
    assert (summary["resumed_from_step"], summary["final_step"]) == (2, 4)
    records = [json.loads(line) for line in paths.train_metrics_file.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4], "metrics past the checkpoint used are replaced, not doubled"
    adapter_config = (paths.adapter_dir / "adapter_config.json").read_text()

    # Run again: it resumes at max_steps, trains nothing, and records the logged loss (never NaN).
    again = run_script(command.TRAIN_MODULE, config, paths.stage_config("finetune"))
    assert again.returncode == 0, again.stdout + again.stderr
    text = paths.train_summary_file.read_text()
    summary = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(f"{name} in JSON")))
    assert (summary["resumed_from_step"], summary["final_step"], summary["final_loss"]) == (4, 4, records[-1]["loss"])
    # Saved configs are the same bytes every time (peft writes target_modules in set order).
    assert (paths.adapter_dir / "adapter_config.json").read_text() == adapter_config
    targets = json.loads(adapter_config)["target_modules"]
    assert targets == sorted(targets) and len(targets) > 1


def test_a_diverging_loss_stops_with_its_step_and_is_diagnosed_as_such(tmp_path: Path, hub_root: Path) -> None:
    from peftpipe.failures import FailureKind, diagnose

    paths, config, _ = make_run(tmp_path, hub_root)
    config.update(max_steps=6, checkpoint_every=1)
    result = subprocess.run(script_argv(command.TRAIN_MODULE, config, paths.stage_config("finetune")),
                            capture_output=True, text=True, env={**os.environ, "PEFTPIPE_FAULT_NAN_AT_STEP": "4"})
    assert result.returncode == 3, result.stdout + result.stderr
    diagnosis = diagnose("FAILED", 3, result.stdout)
    assert diagnosis.kind is FailureKind.NAN_LOSS and "at step" in diagnosis.evidence, diagnosis
    stopped_at = int(diagnosis.evidence.split("at step ")[1].split(";")[0])
    assert stopped_at == 4
    records = [json.loads(line) for line in paths.train_metrics_file.read_text().splitlines()]  # valid JSON
    assert [r["step"] for r in records] == list(range(1, stopped_at))
    newest = max(int(p.name.split("-")[1]) for p in (paths.finetune_dir / "checkpoints").glob("step-*"))
    assert newest < stopped_at, "no checkpoint holds the non-finite state"
