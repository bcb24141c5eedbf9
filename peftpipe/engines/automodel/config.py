"""AutoModel's YAML from the run spec: one pure function, used by ``peftpipe render`` and by the stage.

The keys are those of NeMo AutoModel 0.7.0's LLM fine-tuning recipe
(``TrainFinetuneRecipeForNextTokenPrediction``, ``nemo_automodel/recipes/llm/train_ft.py``), as in
NVIDIA's own example configs (``examples/llm_finetune/llama3_2/*_peft*.yaml``) and checked on the
installed package (../shared/reference/automodel.md section 5.2). Nothing here imports torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from peftpipe.engines.automodel.spec import AutomodelSpec
from peftpipe.paths import RunPaths
from peftpipe.spec import RunSpec

RECIPE = "TrainFinetuneRecipeForNextTokenPrediction"
DATASET_TARGET = ("nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset"
                  ".ColumnMappedTextInstructionDataset")
# The columns of the JSONL the stage writes for AutoModel (layout.py): the prompt (the spec's
# prompt_template up to {output}) and the answer. AutoModel joins them with one space.
PROMPT_COLUMN, ANSWER_COLUMN = "prompt", "answer"
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
SCHEDULES = {"constant": "constant", "linear": "linear", "cosine": "cosine"}


@dataclass(frozen=True)
class AutomodelInputs:
    """The files one attempt reads and writes; all absolute, all under the run directory but the model."""

    model_path: Path
    train_file: Path
    validation_file: Path
    checkpoint_dir: Path


def automodel_inputs(paths: RunPaths, model_path: Path) -> AutomodelInputs:
    from peftpipe.engines.automodel.layout import AutomodelPaths

    layout = AutomodelPaths(paths)
    return AutomodelInputs(model_path, layout.data_file("train"), layout.data_file("validation"),
                           layout.checkpoint_dir)


def resolved_precision(spec: RunSpec) -> str:
    """fp32 or bf16: ``auto`` is bf16 on GPUs and fp32 on CPU ranks (AutoModel trains in one of the two)."""
    precision = spec.train.precision
    if precision == "auto":
        return "bf16" if spec.automodel.device == "cuda" else "fp32"
    return precision


def data_parallel_size(spec: RunSpec) -> int:
    """Ranks the global batch is split over: every rank / tensor-parallel size."""
    world = spec.train.devices * spec.train.num_nodes
    return max(world // spec.automodel.tensor_parallel_size, 1)


def automodel_config(spec: RunSpec, inputs: AutomodelInputs, local_batch_size: int | None = None,
                     activation_checkpointing: bool | None = None) -> dict[str, Any]:
    """The whole AutoModel config as a mapping; the two overrides are what OOM retries change.

    A change of ``local_batch_size`` keeps ``global_batch_size``: AutoModel accumulates
    global / (local x data-parallel) micro batches per optimizer step.
    """
    train, automodel, lora = spec.train, spec.automodel, spec.peft.lora
    precision = resolved_precision(spec)
    checkpointing = train.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    model: dict[str, Any] = {
        "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
        "pretrained_model_name_or_path": str(inputs.model_path),
        "torch_dtype": TORCH_DTYPES[precision],
        "attn_implementation": "sdpa",
        "use_liger_kernel": False,
    }
    if automodel.rms_norm is not None:
        model["backend"] = {"_target_": "nemo_automodel.components.models.common.BackendConfig",
                            "rms_norm": automodel.rms_norm}
    config: dict[str, Any] = {
        "recipe": RECIPE,
        "step_scheduler": {
            "global_batch_size": train.global_batch_size,
            "local_batch_size": local_batch_size or train.micro_batch_size,
            "max_steps": train.max_steps,
            "ckpt_every_steps": train.checkpoint_every,
            "val_every_steps": train.checkpoint_every,
        },
        "dist_env": {"backend": "nccl" if automodel.device == "cuda" else "gloo", "timeout_minutes": 10},
        "rng": {"_target_": "nemo_automodel.components.training.rng.StatefulRNG", "seed": train.seed,
                "ranked": True},
        "model": model,
        "peft": {
            "_target_": "nemo_automodel.components._peft.lora.PeftConfig",
            "target_modules": [lora_target_pattern(name) for name in lora_targets(spec, inputs.model_path)],
            "dim": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "use_triton": False,
        },
        "distributed": _distributed(spec, precision, checkpointing),
        "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
        "dataset": _dataset(inputs.train_file, train.max_seq_length),
        "dataloader": _dataloader(shuffle=True),
        "validation_dataset": _dataset(inputs.validation_file, train.max_seq_length),
        "validation_dataloader": _dataloader(shuffle=False),
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": train.learning_rate, "weight_decay": train.weight_decay,
                      "betas": [0.9, 0.999], "eps": 1e-8},
        "lr_scheduler": {"lr_decay_style": SCHEDULES[train.lr_schedule], "lr_warmup_steps": train.warmup_steps,
                         "lr_decay_steps": train.max_steps, "min_lr": 0.0},
        "checkpoint": {"enabled": True, "checkpoint_dir": str(inputs.checkpoint_dir),
                       "model_save_format": "safetensors", "save_consolidated": False},
    }
    for dotted, value in automodel.overrides.items():
        _set_dotted(config, dotted, copy.deepcopy(value))
    return config


def lora_targets(spec: RunSpec, model_path: Path) -> list[str]:
    """The spec's LoRA targets; ``auto``: every attention and MLP projection of the model's family, from its
    config.json (the choice the hf engine makes)."""
    targets = spec.peft.lora.target_modules
    if targets != "auto":
        return list(targets)
    from peftpipe.model_inspect import inspect_model_dir
    from peftpipe.model_layout import auto_lora_targets

    return auto_lora_targets(inspect_model_dir(model_path))


def lora_target_pattern(name: str) -> str:
    """peft matches a plain name like ``q_proj`` as the last part of a module path; AutoModel matches the
    whole path (or a ``*`` pattern), so a plain name becomes ``*.q_proj``."""
    return name if "*" in name or "." in name else f"*.{name}"


def _distributed(spec: RunSpec, precision: str, activation_checkpointing: bool) -> dict[str, Any]:
    automodel = spec.automodel
    section: dict[str, Any] = {"strategy": automodel.strategy, "dp_size": None,
                               "tp_size": automodel.tensor_parallel_size, "cp_size": 1, "pp_size": 1,
                               "activation_checkpointing": activation_checkpointing}
    if automodel.strategy == "fsdp2" and precision == "fp32":
        # FSDP2's default policy casts parameters to bf16; an fp32 run keeps every dtype fp32.
        section["mp_policy"] = {"_target_": "torch.distributed.fsdp.MixedPrecisionPolicy",
                                "param_dtype": "float32", "reduce_dtype": "float32", "output_dtype": "float32"}
    return section


def _dataset(path: Path, seq_length: int) -> dict[str, Any]:
    return {"_target_": DATASET_TARGET, "path_or_dataset_id": str(path),
            "column_mapping": {"question": PROMPT_COLUMN, "answer": ANSWER_COLUMN},
            "seq_length": seq_length, "answer_only_loss_mask": True, "padding": "do_not_pad",
            "truncation": "longest_first"}


def _dataloader(shuffle: bool) -> dict[str, Any]:
    return {"_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
            "collate_fn": "nemo_automodel.components.datasets.utils.default_collater", "shuffle": shuffle}


def _set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"automodel.overrides.{dotted}: {key!r} is a value, not a section. Fix: override"
                             f" {'.'.join(parents)} itself")
        node = child
    node[leaf] = value


def render_yaml(config: dict[str, Any]) -> str:
    """The YAML file AutoModel reads; keys in the order they were built, so a diff reads top-down."""
    header = "# Rendered by peftpipe from the run spec; change the spec, not this file.\n"
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)
