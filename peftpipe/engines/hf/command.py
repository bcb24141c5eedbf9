"""Pure builders for the hf engine: the JSON configs its scripts read and their argv.

Nothing here imports torch; what these functions return is what a job runs, so they are
covered by golden-file tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftpipe.paths import RunPaths
from peftpipe.spec import RunSpec

TRAIN_MODULE = "peftpipe.engines.hf.train"
GENERATE_MODULE = "peftpipe.engines.hf.generate"


def peft_settings(spec: RunSpec) -> dict[str, Any]:
    method = spec.peft.method
    block = getattr(spec.peft, method).model_dump()
    return {"method": method, **block}


def training_config(spec: RunSpec, model_path: Path, paths: RunPaths, micro_batch_size: int | None = None,
                    activation_checkpointing: bool | None = None, offload_activations: bool = False,
                    shard: bool = False, quantize_base: bool = False) -> dict[str, Any]:
    """The training script's config; the overrides are what OOM retries and the memory ladder change."""
    train = spec.train
    return {
        "model_path": str(model_path),
        "train_file": str(paths.data_file("train")),
        "validation_file": str(paths.data_file("validation")),
        "output_dir": str(paths.finetune_dir),
        "prompt_template": spec.dataset.prompt_template,
        "max_seq_length": train.max_seq_length,
        "peft": peft_settings(spec),
        "global_batch_size": train.global_batch_size,
        "micro_batch_size": micro_batch_size or train.micro_batch_size,
        "max_steps": train.max_steps,
        "learning_rate": train.learning_rate,
        "weight_decay": train.weight_decay,
        "warmup_steps": train.warmup_steps,
        "lr_schedule": train.lr_schedule,
        "precision": train.precision,
        "seed": train.seed,
        "checkpoint_every": train.checkpoint_every,
        "activation_checkpointing": train.activation_checkpointing if activation_checkpointing is None
        else activation_checkpointing,
        "offload_activations": offload_activations,
        "shard": shard,
        "quantize_base": quantize_base,
        "packing": train.packing and spec.peft.method != "ptuning",
    }


def generation_config(spec: RunSpec, model_path: Path, paths: RunPaths) -> dict[str, Any]:
    evaluation = spec.evaluation
    return {
        "model_path": str(model_path),
        "adapter_dir": str(paths.adapter_dir),
        "test_file": str(paths.data_file("test")),
        "predictions_file": str(paths.predictions_file),
        "summary_file": str(paths.eval_summary_file),
        "prompt_template": spec.dataset.prompt_template,
        "max_seq_length": spec.train.max_seq_length + evaluation.tokens_to_generate,
        "tokens_to_generate": evaluation.tokens_to_generate,
        "greedy": evaluation.greedy,
        "batch_size": evaluation.batch_size,
        "max_records": evaluation.max_records,
        "precision": spec.train.precision,
        "seed": spec.train.seed,
        # evaluation.baseline unset (auto) renders as on; the finetune flow settles it before submitting.
        "baseline_predictions_file": (str(paths.baseline_predictions_file)
                                      if evaluation.baseline is not False else None),
    }


def training_script_args(config_file: Path) -> list[str]:
    """What follows the interpreter (or torchrun) in a training process's command line."""
    return ["-m", TRAIN_MODULE, "--config", str(config_file)]


def generation_script_args(config_file: Path) -> list[str]:
    return ["-m", GENERATE_MODULE, "--config", str(config_file)]
