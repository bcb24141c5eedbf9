"""The kernels that make the hf engine fast on GPUs, each with a plain-PyTorch path for CPUs.

- Attention: one function registered with transformers. A packed micro batch (one flat
  sequence plus ``cu_seq_lens``) goes to FlashAttention's variable-length kernel on CUDA, so no
  token attends across records and no time is spent on the masked-out blocks; on a CPU the same
  call runs SDPA record by record. Anything else (padded batches, p-tuning) goes to SDPA without
  a mask, i.e. its flash path.
- Loss: the output projection and cross-entropy fused over chunks of label positions, so the
  (tokens x vocabulary) logits never sit in memory; Liger's Triton kernel when it is installed
  (the ``gpu`` extra) and the device is CUDA, otherwise a chunked autograd function here.
- Liger's RMSNorm, SwiGLU and RoPE kernels on CUDA when Liger is installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

ATTENTION = "peftpipe_varlen"
# Logits of one chunk: chunk x vocabulary floats. 2**27 elements (0.5 GiB in fp32) keeps the
# transient memory small next to the activations while the matrix products stay large.
CHUNK_ELEMENTS = 2**27


# --- attention ----------------------------------------------------------------------------------


def varlen_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_lens: torch.Tensor,
                            max_length: int, scale: float | None) -> torch.Tensor:
    """Causal attention within each record of a flat sequence; (tokens, heads, head_dim) in and out.

    ``key``/``value`` may have fewer heads than ``query`` (grouped-query attention).
    """
    if query.dtype in (torch.float16, torch.bfloat16) and flash_varlen_available(query.device):
        # PyTorch's bundled FlashAttention-2, variable-length entry point; it has autograd and
        # handles grouped-query attention natively (16-bit inputs only).
        output = torch.ops.aten._flash_attention_forward(
            query, key, value, cu_seq_lens, cu_seq_lens, max_length, max_length, 0.0, True, False, scale=scale
        )[0]
        return output
    # CPUs, GPUs before Ampere and fp32: SDPA record by record, exact and slow.
    bounds = cu_seq_lens.tolist()
    pieces = []
    for start, end in zip(bounds, bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                               enable_gqa=k.shape[0] != q.shape[0])
        pieces.append(out.transpose(0, 1))
    return torch.cat(pieces)


def flash_varlen_available(device: torch.device) -> bool:
    """PyTorch's bundled FlashAttention-2 needs an Ampere or newer GPU (a V100 is sm70)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError("a packed micro batch must be one flat sequence")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    if q.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    output = varlen_causal_attention(q, k, v, cu_seq_lens, int(kwargs["max_length_q"]), scaling)
    return output.unsqueeze(0), None


def register_attention() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, attention_forward)
    return ATTENTION


def packed_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
    """The model keyword arguments that route a packed batch to the variable-length kernel."""
    if "cu_seq_lens" not in batch:
        return {}
    cu, longest = batch["cu_seq_lens"], batch["max_length"]
    return {"position_ids": batch["position_ids"], "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": longest, "max_length_k": longest}


# --- loss ---------------------------------------------------------------------------------------


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of ``hidden @ weight.T`` against ``targets``, chunk by chunk.

    The gradient with respect to ``hidden`` is computed in the forward pass, chunk by chunk, so
    only (chunk x vocabulary) logits ever exist. ``weight`` is the frozen output projection: no
    gradient is computed for it.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        weight = weight.to(hidden.dtype)
        for start in range(0, hidden.shape[0], chunk):
            piece, wanted = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (piece @ weight.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, wanted[:, None]).squeeze(1)).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(wanted), device=probs.device), wanted] -= 1.0
                grad[start : start + chunk] = probs.to(hidden.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output.to(grad.dtype) if grad is not None else None), None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             use_liger: bool) -> torch.Tensor:
    """Summed token cross-entropy of the projection ``hidden @ weight.T``, without materialising the logits."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph connected for DDP when a batch has no label
    if use_liger:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets).float()
    chunk = max(256, CHUNK_ELEMENTS // weight.shape[0])
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk)


# --- Liger --------------------------------------------------------------------------------------


def liger_usable(device: torch.device) -> bool:
    """Liger's kernels are Triton kernels: CUDA only, and only when the ``gpu`` extra is installed."""
    return device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def apply_liger_rope(base: Any) -> bool:
    """Liger's RoPE kernel for a family Liger does not patch, where its modeling module rotates halves
    (``rotate_half`` + ``apply_rotary_pos_emb(q, k, cos, sin)``, the layout Liger implements; partial
    rotary as in Pythia included): GPT-NeoX (OpenCALM, rinna), StableLM, Phi and alike.

    Like Liger's own patches this replaces the module's function, for every model of that class in the process.
    """
    import sys

    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    module = sys.modules.get(type(base).__module__)
    original = getattr(module, "apply_rotary_pos_emb", None)
    if original is None or not callable(getattr(module, "rotate_half", None)):
        return False
    if getattr(original, "peftpipe_liger", False):
        return True

    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *args: Any,
                             **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if args or kwargs or not q.is_cuda or cos.shape[-1] > q.shape[-1]:
            return original(q, k, cos, sin, *args, **kwargs)
        return liger_rotary_pos_emb(q, k, cos, sin)

    apply_rotary_pos_emb.peftpipe_liger = True  # type: ignore[attr-defined]
    module.apply_rotary_pos_emb = apply_rotary_pos_emb
    return True


def apply_liger(base: Any) -> bool:
    """Liger's RMSNorm, SwiGLU and RoPE kernels on a model instance; False for model types Liger lacks.

    Its own fused loss is not patched in: the engine computes the loss itself (on label positions only).
    """
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    if base.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return False
    _apply_liger_kernel_to_instance(model=base, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    return True
