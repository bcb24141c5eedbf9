"""The memory ladder's offload rung: tensors autograd saves outside the checkpointed layers go to host memory.

With non-reentrant activation checkpointing (``torch.utils.checkpoint``), each layer keeps only
its input, saved through the saved-tensor hooks active where the layer is called; inside the layer
checkpointing's own hooks take over. So ``torch.autograd.graph.saved_tensors_hooks`` around the
forward pass sees exactly the checkpointed layer inputs (plus the few tensors saved between layers:
the final norm's input, the loss's hidden states). ``HostOffload`` copies each of those to pinned
host memory on a side stream (``non_blocking``: the copy overlaps the next layer's compute), and
brings it back on the compute stream when backward needs it. PyTorch's own ``save_on_cpu`` does the
same with a blocking copy per tensor, which would stall every layer.

Parameters (the frozen output projection the loss saves) and small tensors stay where they are.
"""

from __future__ import annotations

from typing import Any

import torch

MIN_OFFLOAD_BYTES = 16 << 10  # smaller ones (positions, masks) cost more in copies than they free


class HostOffload:
    """Saved-tensor hooks that park large activations in host memory; ``hooks()`` wraps a forward pass."""

    def __init__(self, model: torch.nn.Module, device: torch.device, min_bytes: int = MIN_OFFLOAD_BYTES):
        self.device = device
        self.min_bytes = min_bytes
        # Sharded (FSDP2) parameters are DTensors: their local shard holds the storage.
        self.parameter_storage = {getattr(p, "_local_tensor", p).untyped_storage().data_ptr()
                                  for p in model.parameters()}
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.offloaded_bytes = 0  # since the last ``take_offloaded_bytes``

    def hooks(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def take_offloaded_bytes(self) -> int:
        offloaded, self.offloaded_bytes = self.offloaded_bytes, 0
        return offloaded

    def pack(self, tensor: torch.Tensor) -> Any:
        size = tensor.numel() * tensor.element_size()
        if size < self.min_bytes or tensor.untyped_storage().data_ptr() in self.parameter_storage:
            return tensor
        self.offloaded_bytes += size
        if self.stream is None:  # CPU: a host copy all the same, so the round trip is the one a GPU takes
            return (tensor.detach().clone(), None)
        host = torch.empty(tensor.size(), dtype=tensor.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(tensor.detach(), non_blocking=True)
        # The caching allocator must not hand this memory out again before the copy has read it.
        tensor.record_stream(self.stream)
        return (host, self.stream.record_event())

    def unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        host, copied = packed
        if copied is None:
            return host
        torch.cuda.current_stream(self.device).wait_event(copied)
        return host.to(self.device, non_blocking=True)
