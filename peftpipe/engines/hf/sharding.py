"""The memory ladder's shard rung: FSDP2 (``torch.distributed.fsdp.fully_shard``) over the job's ranks.

Each decoder layer is one FSDP unit and the model root another: every rank holds 1/world of each
parameter (frozen base weights and LoRA adapters alike) and gathers a layer only while it computes
it. The checkpoint format does not change: every rank joins in gathering the adapters and the
optimizer state to full tensors (``full_adapter_state``, ``full_optimizer_state``) and rank 0 writes
them as the unsharded engine does, so a sharded run resumes from an unsharded checkpoint and back,
and the published adapter is a plain PEFT adapter. On loading, full optimizer tensors are cut to
each rank's shard again (``shard_optimizer_state``).

The model is loaded in host memory and ``fully_shard`` moves each unit's shard to the GPU, so no GPU
holds the whole model; the frozen output projection the engine detaches for its fused loss is not
part of any unit and is copied whole to every GPU (1 GiB for Llama-3-8B's vocabulary).

Every forward pass gathers parameters collectively, so all ranks must run the same number of micro
batches: the training script pads micro batches (no packing) when sharding.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def shard_model(model: torch.nn.Module, device: torch.device, world: int) -> int:
    """Shard ``model`` in place: each decoder layer, then the root. Returns the number of layer units."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    mesh = init_device_mesh(device.type, (world,))
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(layers)


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gradient_sync(model: Any, world: int, last: bool) -> Any:
    """The context of one micro batch's backward: gradients cross ranks only after the last one."""
    if world == 1:
        return contextlib.nullcontext()
    if is_sharded(model):
        model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last else model.no_sync()


def full(tensor: Any) -> Any:
    """A DTensor gathered whole (a collective: every rank calls it), on the CPU; anything else as it is."""
    if isinstance(tensor, DTensor):
        return tensor.full_tensor().cpu()
    return tensor


def full_adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """The adapters as ``get_peft_model_state_dict`` gives them for an unsharded model."""
    from peft import get_peft_model_state_dict

    trainable = {name: full(p.detach()) for name, p in model.named_parameters() if p.requires_grad}
    return get_peft_model_state_dict(model, state_dict=trainable)


def full_optimizer_state(optimizer: Any) -> dict[str, Any]:
    state = optimizer.state_dict()
    return {**state, "state": {index: {key: full(value) for key, value in slot.items()}
                               for index, slot in state["state"].items()}}


def shard_optimizer_state(state: dict[str, Any], parameters: list[torch.nn.Parameter]) -> dict[str, Any]:
    """A full optimizer state (as saved) cut to this rank's shards of ``parameters``, in the optimizer's order."""
    sharded = {}
    for index, slot in state["state"].items():
        parameter = parameters[int(index)]
        sharded[index] = {
            key: distribute_tensor(value.to(parameter.device), parameter.device_mesh, parameter.placements)
            if isinstance(parameter, DTensor) and isinstance(value, torch.Tensor) and value.shape == parameter.shape
            else value
            for key, value in slot.items()}
    return {**state, "state": sharded}
