"""GPUs, precision and parallel layout of the nemo engine's jobs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from peftpipe.spec import RunSpec

# Compute capability by GPU model, matched against nemo.gpu or the Slurm gres type name
# (CUDA GPU list, developer.nvidia.com/cuda-gpus). bf16 is native from 8.0 (Ampere) on; below,
# torch emulates it and NeMo's MegatronTrainerBuilder does not check (nemo.md section 7).
GPU_CAPABILITY: tuple[tuple[str, float], ...] = (
    (r"p100", 6.0), (r"v100", 7.0), (r"t4\b|rtx.?6000|rtx.?8000|quadro|2080", 7.5),
    (r"a100|a800|a30\b", 8.0), (r"a10\b|a10g|a40|a16|a2\b|a6000|3090", 8.6),
    (r"l4\b|l40|4090|ada", 8.9), (r"gh200|h100|h200|h800|h20\b", 9.0), (r"gb200|b200|b100", 10.0),
)

# train.precision -> NeMo's trainer.precision spelling.
NEMO_PRECISION = {"fp16": "16", "bf16": "bf16", "fp32": "32"}


def gpu_name(spec: RunSpec) -> str | None:
    return spec.nemo.gpu or spec.execution.slurm.gpu_type


def compute_capability(name: str | None) -> float | None:
    if not name:
        return None
    lowered = name.lower()
    for pattern, capability in GPU_CAPABILITY:
        if re.search(pattern, lowered):
            return capability
    return None


def trainer_precision(spec: RunSpec) -> str | None:
    """16, bf16 or 32 for ``trainer.precision``; None when ``auto`` cannot tell (unknown GPU)."""
    if spec.train.precision != "auto":
        return NEMO_PRECISION[spec.train.precision]
    capability = compute_capability(gpu_name(spec))
    if capability is None:
        return None
    return "bf16" if capability >= 8.0 else "16"


def convert_precision(spec: RunSpec) -> str | None:
    """The converter's ``--precision``: the spec's, else the training precision."""
    return spec.nemo.convert.precision or trainer_precision(spec)


def precision_value(precision: str) -> int | str:
    """NeMo compares trainer.precision with ``[16, '16', 'bf16', ...]``: ints stay ints."""
    return int(precision) if precision.isdigit() else precision


def world_size(spec: RunSpec) -> int:
    return spec.train.devices * spec.train.num_nodes


def data_parallel_size(spec: RunSpec) -> int:
    """Megatron's data-parallel size: world / (TP x PP); what the OOM retry must divide by."""
    return max(world_size(spec) // spec.nemo.model_parallel_size, 1)


@dataclass(frozen=True)
class GenerateLayout:
    devices: int
    nodes: int


def generate_layout(spec: RunSpec) -> GenerateLayout:
    """Generation runs data-parallel 1 on exactly TP x PP GPUs: megatron_gpt_generate.py asserts
    that evaluation TP/PP equal training's (merge_inference_cfg, nlp_adapter_mixins.py l.500-505
    at 2874086783)."""
    model_parallel = spec.nemo.model_parallel_size
    per_node = spec.train.devices
    if model_parallel <= per_node:
        return GenerateLayout(devices=model_parallel, nodes=1)
    return GenerateLayout(devices=per_node, nodes=-(-model_parallel // per_node))
