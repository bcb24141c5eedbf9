"""The hf engine's training and generation scripts, run for real on the tiny model (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from peftpipe.data.prepare import prepare_dataset
from peftpipe.engines.hf import command
from peftpipe.slurm.launch import distributed_program
from peftpipe.engines.hf.train import global_batch_indices
from peftpipe.paths import RunPaths
from peftpipe.validation import load_spec
from tests.conftest import TINY_REPO_ID, write_spec


def make_run(tmp_path: Path, hub_root: Path, changes: dict | None = None) -> tuple[RunPaths, dict, dict]:
    loaded = load_spec(write_spec(tmp_path / "spec", changes))
    paths = RunPaths(tmp_path / "run")
    prepare_dataset(loaded, paths.data_dir)
    model = hub_root / TINY_REPO_ID
    return paths, command.training_config(loaded.spec, model, paths), command.generation_config(loaded.spec, model, paths)


def script_argv(module: str, config: dict, config_file: Path) -> list[str]:
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config))
    return [sys.executable, "-m", module, "--config", str(config_file)]


def run_script(module: str, config: dict, config_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(script_argv(module, config, config_file), capture_output=True, text=True)


def losses(paths: RunPaths) -> list[float]:
    return [json.loads(line)["loss"] for line in paths.train_metrics_file.read_text().splitlines()]


def test_global_batches_do_not_depend_on_micro_batch_or_ranks() -> None:
    first_epoch = [i for step in range(5) for i in global_batch_indices(step, 9, 45, seed=7)]
    assert sorted(first_epoch) == list(range(45))  # every record once per epoch
    assert global_batch_indices(5, 9, 45, seed=7) != global_batch_indices(0, 9, 45, seed=7)  # reshuffled
    assert len(global_batch_indices(4, 8, 45, seed=7)) == 8  # a batch crossing the epoch boundary is full


def test_changing_micro_batch_size_keeps_the_optimisation(tmp_path: Path, hub_root: Path) -> None:
    curves = {}
    for mbs in (4, 1):
        paths, config, _ = make_run(tmp_path / f"mbs{mbs}", hub_root)
        config.update(micro_batch_size=mbs, max_steps=4, checkpoint_every=100)
        result = run_script(command.TRAIN_MODULE, config, paths.stage_config("finetune"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"micro batch {mbs} x accumulation {8 // mbs}" in result.stdout
        curves[mbs] = losses(paths)
    assert curves[4] == pytest.approx(curves[1], rel=1e-4)
    assert curves[4][-1] < curves[4][0]


@pytest.mark.parametrize("method", ["ia3", "ptuning"])
def test_other_methods_train_and_generate(tmp_path: Path, hub_root: Path, method: str) -> None:
    paths, config, generation = make_run(tmp_path, hub_root, {"peft.method": method})
    config.update(max_steps=3, checkpoint_every=100)
    trained = run_script(command.TRAIN_MODULE, config, paths.stage_config("finetune"))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert json.loads((paths.adapter_dir / "adapter_config.json").read_text())["peft_type"] == {
        "ia3": "IA3", "ptuning": "P_TUNING"}[method]
    generated = run_script(command.GENERATE_MODULE, generation, paths.stage_config("evaluate"))
    assert generated.returncode == 0, generated.stdout + generated.stderr
    rows = [json.loads(line) for line in paths.predictions_file.read_text().splitlines()]
    test_records = paths.data_file("test").read_text().splitlines()
    assert len(rows) == len(test_records)
    assert {"input", "pred", "label", "id", "title"} <= set(rows[0])
    # The base model without the adapter is scored on the same records, and the adapter visibly acts.
    baseline = [json.loads(line) for line in paths.baseline_predictions_file.read_text().splitlines()]
    assert [r["input"] for r in baseline] == [r["input"] for r in rows]
    summary = json.loads(paths.eval_summary_file.read_text())
    # The engine's count of changed predictions is the files' own (the script refuses a run where none changed
    # and the loss is the same).
    assert summary["predictions_changed_by_adapter"] == sum(b["pred"] != r["pred"] for b, r in zip(baseline, rows))


def test_killed_training_resumes_from_its_checkpoint(tmp_path: Path, hub_root: Path) -> None:
    paths, config, _ = make_run(tmp_path, hub_root)
    config.update(max_steps=30, checkpoint_every=5)
    argv = script_argv(command.TRAIN_MODULE, config, paths.stage_config("finetune"))
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    checkpoints = paths.finetune_dir / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("step-0000010")) and time.monotonic() < deadline:
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # a crash: no chance to save anything more
    first.wait()
    killed_at = max(json.loads(line)["step"] for line in paths.train_metrics_file.read_text().splitlines())
    assert 10 <= killed_at < 30

    second = subprocess.run(argv, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    resumed = json.loads(paths.train_summary_file.read_text())["resumed_from_step"]
    assert resumed is not None and resumed >= 10 and resumed % 5 == 0
    assert f"resuming from checkpoint step-{resumed:07d} (step {resumed})" in second.stdout
    assert f"step {resumed + 1}/30 " in second.stdout and "step 1/30 " not in second.stdout
    steps = [json.loads(line)["step"] for line in paths.train_metrics_file.read_text().splitlines()]
    assert steps == list(range(1, 31))  # no step lost, none counted twice
    assert json.loads(paths.train_summary_file.read_text())["final_step"] == 30


def test_sigterm_checkpoints_before_exiting(tmp_path: Path, hub_root: Path) -> None:
    """Slurm's --signal (or scancel) gives the job time to save; the next run resumes there."""
    paths, config, _ = make_run(tmp_path, hub_root)
    config.update(max_steps=500, checkpoint_every=1000)
    process = subprocess.Popen(script_argv(command.TRAIN_MODULE, config, paths.stage_config("finetune")),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (paths.train_metrics_file.exists() and paths.train_metrics_file.read_text().count("\n") >= 3):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    saved = sorted((paths.finetune_dir / "checkpoints").glob("step-*"))
    assert saved, output
    assert f"stopping at step {int(saved[-1].name[5:])} on signal {int(signal.SIGTERM)}" in output


def test_two_data_parallel_ranks_follow_the_single_process_loss_curve(tmp_path: Path, hub_root: Path) -> None:
    """torchrun with two CPU ranks (gloo): each takes half of every global batch, gradients are
    averaged by DDP, and the loss curve matches one process on the same global batch."""
    curves = {}
    for ranks in (1, 2):
        paths, config, _ = make_run(tmp_path / f"ranks{ranks}", hub_root)
        config.update(max_steps=4, checkpoint_every=100, micro_batch_size=2)
        config_file = paths.stage_config("finetune")
        script_argv(command.TRAIN_MODULE, config, config_file)  # writes the config file
        program, _, _ = distributed_program(sys.executable, command.training_script_args(config_file), 1, ranks,
                                            "torchrun")
        argv = [str(word) for word in program]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"x ranks {ranks};" in result.stdout
        curves[ranks] = losses(paths)
    assert len(curves[2]) == 4
    assert curves[2] == pytest.approx(curves[1], rel=1e-4)
    assert curves[2][-1] < curves[2][0]


def test_offload_and_4bit_rungs_follow_the_plain_loss_curve(tmp_path: Path, hub_root: Path) -> None:
    """The memory ladder's rungs on one process. Offload: checkpointed layer inputs go to host memory and
    come back for backward; with the same seed the loss curve is the plain run's (rel 1e-5, fp32 on CPU).
    4-bit base (QLoRA, bitsandbytes NF4): the curve stays within 5 % of the plain one (NF4 rounding of the tiny
    random model moves its first loss by 1.9 %)
    and the adapter loads with stock peft on the full-precision base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rungs = {"plain": {}, "offload": {"activation_checkpointing": True, "offload_activations": True},
             "4bit": {"quantize_base": True}}
    curves, offloaded, outputs = {}, {}, {}
    for name, settings in rungs.items():
        paths, config, _ = make_run(tmp_path / name, hub_root)
        config.update(max_steps=4, checkpoint_every=100, **settings)
        result = run_script(command.TRAIN_MODULE, config, paths.stage_config("finetune"))
        assert result.returncode == 0, result.stdout + result.stderr
        curves[name], outputs[name] = losses(paths), result.stdout
        offloaded[name] = [json.loads(line).get("offloaded_gib") for line in paths.train_metrics_file.read_text().splitlines()]
    assert "checkpointed activations offloaded to pinned host memory" in outputs["offload"]
    assert all(gib and gib > 0 for gib in offloaded["offload"]) and offloaded["plain"] == [None] * 4
    assert curves["offload"] == pytest.approx(curves["plain"], rel=1e-5)
    assert curves["plain"][-1] < curves["plain"][0]
    assert "base weights in 4 bits (NF4" in outputs["4bit"]
    assert curves["4bit"] == pytest.approx(curves["plain"], rel=0.05) and curves["4bit"] != curves["plain"]
    assert curves["4bit"][-1] < curves["4bit"][0]
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID),
                                        tmp_path / "4bit" / "run" / "finetune" / "adapter")
    assert any(p.abs().max() > 0 for n, p in adapter.named_parameters() if "lora_B" in n)


def test_two_sharded_ranks_follow_the_single_process_loss_curve_and_resume(tmp_path: Path, hub_root: Path) -> None:
    """The memory ladder's shard rung: torchrun with two CPU ranks (gloo) and FSDP2 gives one process's
    loss curve for the same global batch; stopped at step 2 and resumed from its checkpoint, it
    continues the same curve, and the adapter it publishes loads with stock peft on the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    paths, config, _ = make_run(tmp_path / "single", hub_root)
    config.update(max_steps=4, checkpoint_every=2, micro_batch_size=2)
    assert run_script(command.TRAIN_MODULE, config, paths.stage_config("finetune")).returncode == 0
    single = losses(paths)

    sharded_paths, sharded, _ = make_run(tmp_path / "sharded", hub_root)
    outputs = []
    for max_steps in (2, 4):  # the second run resumes from the first one's step-2 checkpoint
        sharded.update(max_steps=max_steps, checkpoint_every=2, micro_batch_size=2, shard=True)
        config_file = sharded_paths.stage_config("finetune")
        script_argv(command.TRAIN_MODULE, sharded, config_file)
        program, _, _ = distributed_program(sys.executable, command.training_script_args(config_file), 1, 2, "torchrun")
        result = subprocess.run([str(word) for word in program], capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    assert "parameters sharded over 2 ranks (FSDP2" in outputs[0]
    assert "resuming from checkpoint step-0000002 (step 2)" in outputs[1]
    assert losses(sharded_paths) == pytest.approx(single, rel=1e-4)
    base = AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID)
    adapter = PeftModel.from_pretrained(base, sharded_paths.finetune_dir / "adapter")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID),
                                          paths.finetune_dir / "adapter")
    # Adam moves each weight by up to the learning rate a step whatever the gradient's size, so near-zero
    # gradients that differ in the last bits may move weights apart by that much: 4 steps x lr 1e-4.
    lora = [(name, tensor, expected) for (name, tensor), (_, expected)
            in zip(adapter.named_parameters(), reference.named_parameters()) if "lora_" in name]
    assert lora and all(torch.allclose(tensor, expected, atol=4e-4) for _, tensor, expected in lora)
    assert any(tensor.abs().max() > 0 for name, tensor, _ in lora if "lora_B" in name)  # trained, not the zero init
