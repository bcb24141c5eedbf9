"""The q/k/v split of a fused, head-interleaved ``query_key_value`` projection without its two backward copies.

GPT-NeoX-style attention (OpenCALM, rinna, Pythia) computes ``qkv.view(b, s, heads, 3 * d).transpose(1, 2)
.chunk(3, dim=-1)``. Autograd then rebuilds the projection's gradient with a ``cat`` of the three (strided)
head gradients into the transposed layout and a second, strided copy back to (tokens, features) for the
projection's backward: about 0.75 ms a layer on an H200 at 16k tokens. :class:`SplitHeads` returns the
same three views and writes their gradients straight into the projection's own layout, one pass.

Installed by layout, not by class name: an attention module with a fused ``query_key_value`` linear of
3 x hidden outputs, ``head_size`` and ``rotary_ndims``, in a modeling module that rotates with
``apply_rotary_pos_emb`` and calls attention through transformers' attention interface.
"""

from __future__ import annotations

import sys
from typing import Any

import torch


class SplitHeads(torch.autograd.Function):
    """(batch, seq, heads * 3 * d) -> q, k, v as (batch, heads, seq, d) views, as GPT-NeoX splits them."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
        batch, seq, width = qkv.shape
        ctx.shape = (batch, seq, heads, 3, width // (3 * heads))
        parts = qkv.view(ctx.shape)
        ctx.set_materialize_grads(False)
        return tuple(parts[:, :, :, i].transpose(1, 2) for i in range(3))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        present = [g for g in grads if g is not None]
        if not present:
            return None, None
        grad = present[0].new_empty(ctx.shape)
        for i, part in enumerate(grads):
            if part is None:
                grad[:, :, :, i].zero_()
            else:
                grad[:, :, :, i].copy_(part.transpose(1, 2))
        return grad.view(*ctx.shape[:2], -1), None


def _fits(module: Any) -> bool:
    projection = getattr(module, "query_key_value", None)
    modeling = sys.modules.get(type(module).__module__)
    return (isinstance(projection, torch.nn.Module) and hasattr(module, "head_size") and hasattr(module, "rotary_ndims")
            and getattr(projection, "out_features", None) == 3 * getattr(projection, "in_features", -1)
            and projection.out_features % (3 * module.head_size) == 0
            and callable(getattr(modeling, "apply_rotary_pos_emb", None))
            and hasattr(modeling, "ALL_ATTENTION_FUNCTIONS"))


def split_heads_forward(module: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                        layer_past: Any = None, position_embeddings: tuple | None = None,
                        **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """GPT-NeoX attention's forward with :class:`SplitHeads`; with a key/value cache, the model's own."""
    if layer_past is not None or position_embeddings is None:
        return type(module).forward(module, hidden_states, attention_mask, layer_past=layer_past,
                                    position_embeddings=position_embeddings, **kwargs)
    modeling = sys.modules[type(module).__module__]
    heads = module.query_key_value.out_features // (3 * module.head_size)
    query, key, value = SplitHeads.apply(module.query_key_value(hidden_states), heads)
    cos, sin = position_embeddings
    query, key = modeling.apply_rotary_pos_emb(query, key, cos, sin)  # the engine may have patched it (Liger)
    attention = modeling.ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation,
                                                               modeling.eager_attention_forward)
    output, weights = attention(module, query, key, value, attention_mask, scaling=module.scaling,
                                dropout=0.0 if not module.training else module.attention_dropout, **kwargs)
    output = output.reshape(*hidden_states.shape[:-1], -1).contiguous()
    return module.dense(output), weights


def install_split_heads(model: Any) -> int:
    """Route every fitting attention module through :func:`split_heads_forward`; returns how many."""
    count = 0
    for module in model.modules():
        if _fits(module) and not isinstance(getattr(module, "forward", None), _SplitHeadsForward):
            module.forward = _SplitHeadsForward(module)
            count += 1
    return count


class _SplitHeadsForward:
    """A picklable, deep-copyable bound forward (a closure would keep pointing at the original module)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return split_heads_forward(self.module, *args, **kwargs)
