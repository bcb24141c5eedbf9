"""STAND-IN (test fixture) for megatron_gpt_finetuning.py and megatron_gpt_generate.py; see standin.py."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

from tests.nemo_standin import expectations as ex
from tests.nemo_standin.standin import (StandinError, check_batches, check_template, check_world, compose, log,
                                        oom_if_asked, rank, read_nemo_config, read_records, require, write_nemo)

UNFINISHED = "-unfinished"


def _check_peft(profile: str, cfg) -> None:
    scheme = cfg.model.peft.peft_scheme
    if scheme not in ex.PEFT_SCHEMES[profile]:
        raise StandinError("KeyError", repr(scheme))  # PEFT_CONFIG_MAP[cfg.model.peft.peft_scheme]
    if scheme == "lora":
        for module in cfg.model.peft.lora_tuning.target_modules:
            if module not in ex.LORA_TARGETS:
                log(f"Unrecognized target_module string: {module}.\nThe possible options are: {list(ex.LORA_TARGETS)}",
                    "E", "peft_config:164")
                raise SystemExit(1)


def _resume_step(checkpoints: Path) -> int:
    """exp_manager.check_resume: finished *last.ckpt candidates; more than one is an error."""
    last = [p for p in sorted(glob.glob(str(checkpoints / "**" / "*last.ckpt"), recursive=True))
            if not Path(p.removesuffix(".ckpt") + UNFINISHED).exists()]
    if not last:
        log(f"There were no checkpoints found in checkpoint_dir or no checkpoint folder at checkpoint_dir"
            f" :{checkpoints}. Training from scratch.", "W", "exp_manager:632")
        return 0
    if len(last) > 1:
        raise StandinError("ValueError", f"Multiple checkpoints {last} that matches *last.ckpt.")
    log(f"Resuming training from checkpoint: {last[0]}", where="exp_manager:658")
    return json.loads(Path(last[0]).read_text())["step"]


def _process_group_barrier(log_dir: Path) -> None:
    """Stands for the process-group initialisation: no rank trains before every rank has started.

    Without it, rank 0 of a fast stand-in could save a checkpoint while another rank is still
    looking for the one to resume from, and that rank would see two *last.ckpt files: a race
    NeMo itself cannot have.
    """
    ranks = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    if ranks <= 1:
        return
    launch = "-".join(os.environ.get(key, "") for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "MASTER_PORT"))
    arrived = log_dir / f".standin-started-{launch}"
    arrived.mkdir(parents=True, exist_ok=True)
    (arrived / str(rank())).touch()
    if rank() != 0:
        return
    deadline = time.monotonic() + 120
    while len(list(arrived.iterdir())) < ranks:
        if time.monotonic() > deadline:
            raise StandinError("RuntimeError", f"timed out waiting for {ranks} ranks to initialise the process group")
        time.sleep(0.05)
    shutil.rmtree(arrived, ignore_errors=True)


def _save(checkpoints: Path, name: str, step: int, loss: float, consumed: int, micro: int) -> None:
    """NeMoModelCheckpoint: marker, new -last, top-1, then the old -last goes, then the marker."""
    stem = f"{name}--validation_loss={loss:.3f}-step={step}-consumed_samples={consumed:.1f}"
    checkpoints.mkdir(parents=True, exist_ok=True)
    marker = checkpoints / f"{stem}-last{UNFINISHED}"
    marker.touch()
    body = json.dumps({"step": step, "consumed_samples": consumed, "micro_batch_size": micro})
    (checkpoints / f"{stem}-last.ckpt").write_text(body)
    old = [p for p in checkpoints.glob("*-last.ckpt") if p.name != f"{stem}-last.ckpt"]
    if os.environ.get("NEMO_STANDIN_KILL_AT_STEP") == str(step):
        marker.unlink()  # the new checkpoint was complete; the job dies before removing the old one
        log(f"stand-in: killed while saving step {step}", "W")
        os._exit(137)
    for path in old:
        path.unlink()
    for path in checkpoints.glob(f"{name}--*[0-9].ckpt"):
        path.unlink()  # save_top_k: 1
    (checkpoints / f"{stem}.ckpt").write_text(body)
    marker.unlink()


def finetune(profile: str, argv: list[str]) -> int:
    cfg = compose(ex.finetune_keys(profile), argv)
    log("\n\n************** Experiment configuration ***********", where="megatron_gpt_finetuning:56")
    require(cfg, "model.restore_from_path", "model.data.train_ds.file_names", "model.data.validation_ds.file_names")
    world, data_parallel = check_world(cfg)
    if not cfg.exp_manager.explicit_log_dir:
        raise StandinError("ValueError", "stand-in: set exp_manager.explicit_log_dir (peftpipe always does)")
    log_dir = Path(cfg.exp_manager.explicit_log_dir)
    base = read_nemo_config(Path(cfg.model.restore_from_path), "model.restore_from_path")
    tp = int(cfg.model.tensor_model_parallel_size)
    for key in ("num_attention_heads", "num_query_groups"):
        if int(base[key]) % tp:
            raise StandinError("AssertionError", f"{key} ({base[key]}) must be divisible by"
                               f" tensor_model_parallel_size ({tp})")
    _check_peft(profile, cfg)
    train, validation = cfg.model.data.train_ds, cfg.model.data.validation_ds
    from omegaconf import OmegaConf

    for data_cfg in (train, validation):
        if not OmegaConf.is_list(data_cfg.file_names):
            raise StandinError("ValueError", "SFT train/validation datasets must be provided as a list of"
                               " individual JSONL files.")
    probabilities = train.concat_sampling_probabilities
    if not OmegaConf.is_list(probabilities):
        raise StandinError("ValueError", "concat_sampling_probabilities must be a ListConfig with the same number"
                           f" of files in file_names.Found: {probabilities}")
    if len(probabilities) != len(train.file_names):
        raise StandinError("ValueError", "concat_sampling_probabilities must be of the same size as file_names.")
    max_steps = int(cfg.trainer.max_steps)
    if max_steps <= 0:
        raise StandinError("ValueError", f"Trainer max_steps must be set to a positive integer. Found {max_steps}")
    micro, global_batch = int(cfg.model.micro_batch_size), int(cfg.model.global_batch_size)
    check_batches(int(train.global_batch_size), int(train.micro_batch_size), data_parallel)
    check_batches(int(validation.global_batch_size), int(validation.micro_batch_size), data_parallel)
    template = check_template(train)
    read_records(train.file_names, train)
    read_records(validation.file_names, validation)
    name = str(cfg.name)
    checkpoints = log_dir / "checkpoints"
    start = _resume_step(checkpoints)
    _process_group_barrier(log_dir)
    oom_if_asked(micro)
    if rank() != 0:
        return 0
    interval = int(cfg.trainer.val_check_interval)
    loss = 2.0
    for step in range(start + 1, max_steps + 1):
        oom_if_asked(micro, step)
        loss = 2.0 * math.exp(-step / max(max_steps, 1))
        if step % int(cfg.trainer.log_every_n_steps) == 0 or step == max_steps:
            print(f"Epoch 0: : {step}/{max_steps} reduced_train_loss={loss:.3f}, global_step={step}.0,"
                  f" consumed_samples={step * global_batch}.0", flush=True)
        if step % interval == 0 or step == max_steps:
            log(f"validation_loss={loss:.3f} at step {step}", where="megatron_gpt_sft_model:620")
            _save(checkpoints, name, step, loss, step * global_batch, micro)
    peft = {"peft_scheme": str(cfg.model.peft.peft_scheme)}
    for block in ("lora_tuning", "adapter_tuning", "p_tuning", "ia3_tuning"):
        peft[block] = OmegaConf.to_container(cfg.model.peft[block], resolve=True)
    adapter = {**base, "peft": peft, "precision": cfg.trainer.precision, "tensor_model_parallel_size": tp,
               "pipeline_model_parallel_size": int(cfg.model.pipeline_model_parallel_size),
               "micro_batch_size": micro, "global_batch_size": global_batch,
               "data": {"train_ds": {"prompt_template": str(train.prompt_template), "label_key": str(train.label_key)}},
               "world_size": world, "prompt_template_decoded": template}
    adapter_path = checkpoints / f"{name}.nemo"
    write_nemo(adapter_path, adapter)
    log(f"NeMo model saved to: {adapter_path}", where="nemo_model_checkpoint:259")
    return 0


def _fill(template: str, record: dict) -> str:
    return re.sub(r"{(\w+)}", lambda m: str(record.get(m.group(1), "")), template)


def generate(profile: str, argv: list[str]) -> int:
    cfg = compose(ex.generate_keys(profile), argv)
    require(cfg, "model.restore_from_path", "model.data.test_ds.file_names", "model.data.test_ds.names")
    world, data_parallel = check_world(cfg)
    read_nemo_config(Path(cfg.model.restore_from_path), "model.restore_from_path")
    test = cfg.model.data.test_ds
    if cfg.model.peft.restore_from_path:
        adapter = read_nemo_config(Path(cfg.model.peft.restore_from_path), "model.peft.restore_from_path")
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if adapter[key] != cfg.model[key]:
                raise StandinError("AssertionError", f"PEFT evaluation {key} ({cfg.model[key]}) must equal training"
                                   f" {key} ({adapter[key]})")
    check_batches(int(test.global_batch_size), int(test.micro_batch_size), data_parallel)
    template = check_template(test)
    records = read_records(test.file_names, test)
    if rank() != 0:
        return 0
    print("Testing DataLoader 0: 100%", flush=True)
    write = bool(test.write_predictions_to_file)
    if write and test.output_file_path_prefix is None:
        raise StandinError("ValueError", "Cannot write predictions to file when output_file_path_prefix is not set"
                           " or present in the yaml config file.")
    names = list(test.names) if not isinstance(test.names, str) else [test.names]
    if write or test.metric.name != "loss":
        context = template[: -len(f"{{{test.label_key}}}")]
        rows = []
        for index, record in enumerate(records):
            label = str(record[test.label_key])
            # Not a model: every third prediction differs in case and trailing space, so raw and
            # normalised exact match disagree as they do for real generations.
            pred = label if index % 3 else label.upper() + " "
            row = {"input": _fill(context, record), "pred": pred, "label": label}
            row.update({k: v for k, v in record.items() if k not in ("input", "output")})
            rows.append(row)
        if write:
            path = Path(f"{test.output_file_path_prefix}_test_{names[0]}_inputs_preds_labels.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            log(f"Predictions saved to {path}", where="megatron_gpt_sft_model:706")
    print("────────────────────────────────────────────────────────────")
    print("       Test metric             DataLoader 0")
    print("────────────────────────────────────────────────────────────")
    print(f"        test_loss            {0.4321:.4f}")
    print(f"     test_loss_{names[0]}         {0.4321:.4f}")
    print("────────────────────────────────────────────────────────────", flush=True)
    return 0
