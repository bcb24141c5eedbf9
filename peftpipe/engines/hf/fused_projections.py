"""Linear projections of one input computed together, with their LoRA branches folded in.

Why: under peft, an adapted projection costs its base product plus about six full-size
elementwise passes (the LoRA product's output, ``* scaling``, ``+ result``, and the same again
backwards), and the backward sums the input gradients of q, k, v and of each LoRA A product with
separate adds. On an H100 those adds and multiplies took about 9 % of a LoRA q/k/v/o step
(bench/results/train_throughput_h100_profile.md). Here one autograd function computes every
projection of a shared input (q/k/v of an attention block, gate/up of an MLP, or a single
projection such as o_proj) so that:

- all LoRA A matrices of the group are one product ``x @ [A_q; A_k; A_v]^T``;
- each output starts as the small LoRA product (scaling folded into B) and the base product is
  accumulated onto it by the GEMM itself (``addmm_``, beta=1): the branch costs one write pass;
- backward, the input gradient is one buffer that each base product accumulates into the same
  way, so no separate adds.

The modules keep their parameters and their peft structure (adapters save and load as before);
only their ``forward`` is routed through a :class:`ProjectionGroup`. Whenever the fast path does
not apply (several active adapters, dropout, DoRA or another LoRA variant, a trainable base,
unmerging needed, extra arguments, a subclass of ``nn.Linear`` such as a quantized layer) the
module's own forward runs instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

# Sibling projections that the transformers decoders call with the same input tensor.
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(frozen=True)
class Projection:
    """What one module computes: ``x @ weight.T + bias`` plus ``scaling * (x @ lora_a.T) @ lora_b.T``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora_a: torch.Tensor | None = None
    lora_b: torch.Tensor | None = None
    scaling: float | None = None


def _frozen_linear(module: Any) -> bool:
    # Exactly nn.Linear: its subclasses (FP8, bitsandbytes 4/8-bit, ...) compute with more than ``weight``.
    return (type(module) is torch.nn.Linear and not module.weight.requires_grad
            and (module.bias is None or not module.bias.requires_grad))


def projection_of(module: Any) -> Projection | None:
    """The projection ``module`` computes right now, or None when only its own forward can compute it."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(module, LoraLinear):
        return Projection(module.weight, module.bias) if _frozen_linear(module) else None
    base = module.base_layer
    if not _frozen_linear(base) or module.fan_in_fan_out:
        return None
    if module.merged:
        # Merged weights already hold the adapter; disabling would need peft's unmerge.
        return None if module.disable_adapters else Projection(base.weight, base.bias)
    active = [] if module.disable_adapters else [a for a in module.active_adapters if a in module.lora_A]
    if not active:
        return Projection(base.weight, base.bias)
    if len(active) > 1:
        return None
    name = active[0]
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    plain = (name not in module.lora_variant and isinstance(module.lora_dropout[name], torch.nn.Identity)
             and isinstance(lora_a, torch.nn.Linear) and isinstance(lora_b, torch.nn.Linear) and lora_b.bias is None)
    if not plain:
        return None
    return Projection(base.weight, base.bias, lora_a.weight, lora_b.weight, float(module.scaling[name]))


def _flatten(projections: list[Projection]) -> tuple[tuple, list[torch.Tensor]]:
    """Autograd functions take tensors as positional arguments: a layout plus the flat tensor list."""
    layout, tensors = [], []
    for p in projections:
        layout.append((p.bias is not None, p.scaling))
        tensors.append(p.weight)
        if p.bias is not None:
            tensors.append(p.bias)
        if p.scaling is not None:
            tensors += [p.lora_a, p.lora_b]
    return tuple(layout), tensors


def _unflatten(layout: tuple, tensors: tuple) -> list[Projection]:
    items, projections = iter(tensors), []
    for has_bias, scaling in layout:
        weight = next(items)
        bias = next(items) if has_bias else None
        lora = (next(items), next(items)) if scaling is not None else (None, None)
        projections.append(Projection(weight, bias, *lora, scaling))
    return projections


def _lora_columns(projections: list[Projection]) -> list[slice | None]:
    """Where each projection's LoRA rank sits in the shared ``x @ A^T`` product."""
    columns, offset = [], 0
    for p in projections:
        if p.scaling is None:
            columns.append(None)
            continue
        columns.append(slice(offset, offset + p.lora_a.shape[0]))
        offset += p.lora_a.shape[0]
    return columns


class SharedInputProjections(torch.autograd.Function):
    """Every projection of one 2-D input ``x`` (tokens x features); frozen base weights.

    An output that gets no gradient leaves its adapter without one, as under peft.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layout: tuple, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        projections = _unflatten(layout, tensors)
        dtype = x.dtype
        lora_a = [p.lora_a for p in projections if p.scaling is not None]
        x_a = x @ torch.cat(lora_a).to(dtype).t() if lora_a else None
        outputs = []
        for p, columns in zip(projections, _lora_columns(projections)):
            weight = p.weight.to(dtype)
            if columns is None:
                outputs.append(torch.nn.functional.linear(x, weight, None if p.bias is None else p.bias.to(dtype)))
                continue
            scaled_b = (p.lora_b * p.scaling).to(dtype).t()
            out = (torch.mm(x_a[:, columns], scaled_b) if p.bias is None
                   else torch.addmm(p.bias.to(dtype), x_a[:, columns], scaled_b))
            outputs.append(out.addmm_(x, weight.t()))
        ctx.set_materialize_grads(False)
        ctx.layout, ctx.dtype = layout, dtype
        # x is needed only for the LoRA A gradients: the frozen products' input gradients need the weights alone.
        ctx.save_for_backward(x if lora_a else None, x_a, *tensors)
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        x, x_a, *tensors = ctx.saved_tensors
        projections = _unflatten(ctx.layout, tuple(tensors))
        dtype, wanted = ctx.dtype, ctx.needs_input_grad[2:]
        flat_grads: list[torch.Tensor | None] = [None] * len(tensors)
        grad_x_a, lora_a, a_slots = [], [], []
        slot = 0
        for p, columns, grad in zip(projections, _lora_columns(projections), grads):
            slot += 1 if p.bias is None else 2  # the frozen weight (and bias): no gradient
            if columns is None:
                continue
            a_slot, b_slot, slot = slot, slot + 1, slot + 2
            if grad is None:
                continue
            grad_x_a.append(grad @ (p.lora_b * p.scaling).to(dtype))
            lora_a.append(p.lora_a)
            a_slots.append(a_slot)
            if wanted[b_slot]:
                flat_grads[b_slot] = (grad.t() @ x_a[:, columns]).to(p.lora_b.dtype).mul_(p.scaling)
        grad_x = None
        if grad_x_a:
            grad_x_a_all = torch.cat(grad_x_a, dim=1)
            if any(wanted[a_slot] for a_slot in a_slots):  # one product for every A of the group
                grad_a_all = grad_x_a_all.t() @ x
                for a_slot, a, rows in zip(a_slots, lora_a, grad_a_all.split([a.shape[0] for a in lora_a])):
                    flat_grads[a_slot] = rows.to(a.dtype) if wanted[a_slot] else None
            if ctx.needs_input_grad[0]:
                grad_x = grad_x_a_all @ torch.cat(lora_a).to(dtype)
        if ctx.needs_input_grad[0]:
            for p, grad in zip(projections, grads):
                if grad is not None:
                    weight = p.weight.to(dtype)
                    grad_x = grad @ weight if grad_x is None else grad_x.addmm_(grad, weight)
        return (grad_x, None, *flat_grads)


def project(x: torch.Tensor, projections: list[Projection]) -> list[torch.Tensor]:
    """Every projection of ``x`` (any leading shape), in the autocast precision when autocast is on."""
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    layout, tensors = _flatten(projections)
    lead = x.shape[:-1]
    with torch.autocast(device_type, enabled=False):
        outputs = SharedInputProjections.apply(x.reshape(-1, x.shape[-1]).to(dtype), layout, *tensors)
    return [out.view(*lead, out.shape[-1]) for out in outputs]


class ProjectionGroup:
    """Sibling modules called one after another on the same input tensor.

    Whichever member is called first computes every member's output in one
    :class:`SharedInputProjections`; the others pick theirs up when they are called with that same
    tensor. A call that finds outputs pending for another tensor (cross-attention, say) drops them
    and the group stops sharing: from then on each member computes its own output.
    """

    def __init__(self, modules: list[Any]) -> None:
        self.modules = modules
        self.shares_input = len(modules) > 1
        self._input: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}

    def install(self) -> None:
        for index, module in enumerate(self.modules):
            # A partial of a bound method rather than a closure: deepcopy and pickle then follow the copy.
            module.forward = functools.partial(self.output, index)

    def own_forward(self, index: int, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        module = self.modules[index]
        return type(module).forward(module, x, *args, **kwargs)

    def output(self, index: int, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            return self.own_forward(index, x, *args, **kwargs)
        if self._pending:
            if x is self._input and index in self._pending:
                out = self._pending.pop(index)
                if not self._pending:
                    self._input = None
                return out
            self._input, self._pending, self.shares_input = None, {}, False
        members = [index] + [i for i in range(len(self.modules)) if i != index] if self.shares_input else [index]
        projections = [projection_of(self.modules[i]) for i in members]
        if len(members) > 1 and any(p is None for p in projections):
            members, projections = [index], projections[:1]  # this one may still be fine on its own
        if projections[0] is None:
            return self.own_forward(index, x)
        outputs = project(x, projections)
        if len(members) > 1:
            self._input, self._pending = x, dict(zip(members[1:], outputs[1:]))
        return outputs[0]


def fuse_projections(model: Any) -> list[ProjectionGroup]:
    """Route the model's linear projections through :class:`ProjectionGroup`; returns the groups.

    Groups: q/k/v and gate/up siblings (when all are frozen linears or LoRA linears), plus every
    other LoRA linear on its own. Frozen linears outside a group are left alone, and so are modules
    whose forward was already replaced (a second call changes nothing).
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    def free(module: Any) -> bool:
        return module is not None and "forward" not in vars(module)

    groups, taken = [], set()
    for parent in model.modules():
        children = dict(parent.named_children())
        for names in SHARED_INPUT_GROUPS:
            members = [children.get(name) for name in names]
            if all(free(m) and (isinstance(m, LoraLinear) or _frozen_linear(m)) for m in members):
                groups.append(ProjectionGroup(members))
                taken.update(id(m) for m in members)
    for module in model.modules():
        if isinstance(module, LoraLinear) and id(module) not in taken and free(module):
            groups.append(ProjectionGroup([module]))
    for group in groups:
        group.install()
    return groups
