"""The nemo stages' pure parts: what is read from NeMo's training log, and when a stored .nemo is reused."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from peftpipe.engines.nemo import jobs
from peftpipe.engines.nemo.layout import NemoPaths
from peftpipe.hub.fetch import FetchedModel, use_local_model
from peftpipe.paths import RunPaths
from peftpipe.engines.nemo.stages import base_store_run, conversion_inputs, last_checkpoint_step, read_train_log
from tests.nemo_cases import LLAMA, load

# megatron_gpt_finetuning.py's progress bar as Lightning redraws it (\r) with NeMo's logged metrics.
RESUMED_LOG = (
    "[NeMo I 2024-04-02 10:40:11 exp_manager:658] Resuming training from checkpoint: /scratch/r1/finetune/nemo/"
    "checkpoints/megatron_gpt_peft_lora_tuning--validation_loss=1.098-step=600-consumed_samples=19200.0-last.ckpt\n"
    "Epoch 0: :  60%|██████    | 601/1000 [00:02<00:01, reduced_train_loss=1.102, global_step=600.0,"
    " consumed_samples=19232.0, train_step_timing in s=0.412]\r"
    "Epoch 0: : 100%|██████████| 1000/1000 [02:51<00:00, reduced_train_loss=0.736, global_step=999.0,"
    " consumed_samples=32000.0, train_step_timing in s=0.409, val_loss=0.812]\n"
    "[NeMo I 2024-04-02 10:43:02 nemo_model_checkpoint:259] NeMo model saved to: /scratch/r1/finetune/nemo/"
    "checkpoints/megatron_gpt_peft_lora_tuning.nemo\n"
)


def test_the_last_loss_and_the_resume_step_are_read_from_nemos_log() -> None:
    log = read_train_log(RESUMED_LOG)
    assert log.final_loss == 0.736 and log.resumed_from_step == 600


def test_an_attempt_that_trained_no_step_has_no_loss_rather_than_an_invented_one() -> None:
    log = read_train_log("[NeMo W 2024-04-02 10:40:11 exp_manager:632] There were no checkpoints found in"
                         " checkpoint_dir or no checkpoint folder at checkpoint_dir :/x. Training from scratch.\n")
    assert math.isnan(log.final_loss) and log.resumed_from_step is None


def test_final_step_comes_from_the_finished_last_checkpoint(tmp_path: Path) -> None:
    name = "megatron_gpt_peft_lora_tuning--validation_loss=0.812-step={}-consumed_samples=0.0"
    (tmp_path / f"{name.format(900)}-last.ckpt").write_text("{}")
    (tmp_path / f"{name.format(1000)}-last.ckpt").write_text("{}")
    (tmp_path / f"{name.format(1000)}-last-unfinished").touch()  # its save was interrupted
    assert last_checkpoint_step(tmp_path) == 900


def _model(tmp_path: Path) -> FetchedModel:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    shutil.copy(LLAMA.parent / "model" / "config.json", model / "config.json")
    (model / "model.safetensors").write_bytes(b"weights")
    return use_local_model(model)


def _store_run(loaded, model: FetchedModel, run: Path) -> str:
    paths = NemoPaths(RunPaths(run))
    command = jobs.convert_command(loaded, paths, model.path)
    return base_store_run(conversion_inputs(loaded, model, command, paths.converted_nemo))


def test_the_stored_nemo_is_shared_across_runs_but_not_across_precisions_nodes_or_weights(tmp_path: Path) -> None:
    model = _model(tmp_path)
    loaded = load(LLAMA)
    key = _store_run(loaded, model, tmp_path / "run-a")
    assert key.startswith("nemo-base-") and _store_run(loaded, model, tmp_path / "run-b") == key
    assert _store_run(load(LLAMA, {"nemo.convert.precision": "32"}), model, tmp_path / "run-a") != key
    # A GPU node writes the bf16 a CPU node cannot: another .nemo.
    assert _store_run(load(LLAMA, {"nemo.convert.gpus": 1}), model, tmp_path / "run-a") != key
    assert _store_run(load(LLAMA, {"nemo.profile": "24.07"}), model, tmp_path / "run-a") != key
    (model.path / "config.json").write_text((model.path / "config.json").read_text().replace("32000", "32001"))
    assert _store_run(loaded, model, tmp_path / "run-a") != key


def test_a_hub_model_is_identified_by_its_commit(tmp_path: Path) -> None:
    local = _model(tmp_path)
    loaded = load(LLAMA)
    hub = FetchedModel(local.path, "meta-llama/Llama-2-7b-hf", "a" * 40, local.files)
    moved = FetchedModel(tmp_path / "elsewhere", "meta-llama/Llama-2-7b-hf", "a" * 40, local.files)
    shutil.copytree(local.path, moved.path)
    assert _store_run(loaded, hub, tmp_path / "r") == _store_run(loaded, moved, tmp_path / "r")
    newer = FetchedModel(local.path, "meta-llama/Llama-2-7b-hf", "b" * 40, local.files)
    assert _store_run(loaded, newer, tmp_path / "r") != _store_run(loaded, hub, tmp_path / "r")


def test_a_damaged_stored_nemo_is_converted_again_not_used(tmp_path: Path) -> None:
    from peftpipe.artifacts import FileArtifactStore, publish_directory
    from peftpipe.engines.nemo.stages import BASE_NEMO_KEY, _restore_base

    store = FileArtifactStore(tmp_path / "store")
    converted = tmp_path / "base.nemo"
    converted.write_bytes(b"a converted .nemo")
    publish_directory(store, "nemo-base-x", {BASE_NEMO_KEY: converted}, {"kind": "nemo-base"})
    lines: list[str] = []
    target = tmp_path / "run" / "convert" / "base.nemo"
    assert _restore_base(store, "nemo-base-x", target, lines.append)["sha256"]
    assert target.read_bytes() == b"a converted .nemo"

    (tmp_path / "store" / "nemo-base-x" / BASE_NEMO_KEY).write_bytes(b"a damaged .nemo!!")
    other = tmp_path / "other" / "base.nemo"
    assert _restore_base(store, "nemo-base-x", other, lines.append) is None
    assert not other.exists() and "damaged, converting again" in lines[-1]
    assert _restore_base(store, "nemo-base-never-stored", other, lines.append) is None


def test_a_late_ranks_resume_line_after_training_is_not_a_resume() -> None:
    from peftpipe.engines.nemo.stages import read_train_log

    log = ("Epoch 0: : 3/3 reduced_train_loss=0.736, global_step=3.0\n"
           "[NeMo I exp_manager:658] Resuming training from checkpoint: /x/ckpt--step=3-consumed_samples=24.0-last.ckpt\n")
    assert read_train_log(log).resumed_from_step is None
    resumed = ("[NeMo I exp_manager:658] Resuming training from checkpoint: /x/ckpt--step=6-last.ckpt\n"
               "Epoch 0: : 7/10 reduced_train_loss=0.5, global_step=7.0\n")
    assert read_train_log(resumed).resumed_from_step == 6
