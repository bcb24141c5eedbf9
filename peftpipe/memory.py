"""Per-GPU memory of a PEFT fine-tuning step, estimated from the model's shape (pure: no torch).

The estimate is the peak of ``torch.cuda.max_memory_allocated``: weights, the adapters' fp32
weights, gradients and AdamW moments, the activations kept for the backward pass, the logits
(or the fused loss's chunk), and nothing of the CUDA context (~0.5 GiB) or the allocator's
cache; keep that headroom when comparing with a GPU's capacity.

Activations, bytes per token and layer, are ``c_h * hidden + c_i * intermediate`` (the MLP's
three (tokens x intermediate) tensors dominate Llama-style layers). The coefficients were
fitted to peak memory measured on one H100 for a Llama-3.2-1B-shaped model at sequence length
2048 (shared/reference/perf_reliability.md sections 1.2 and 9; bench/RESULTS-perf.md):

- ``plain``: transformers' eager RMSNorm / SiLU and peft's default fp32 adapter inputs; full
  logits (bf16 logits kept by the caller, their fp32 log-softmax and its gradient: ~12 bytes a
  token and vocabulary entry).
- ``fused``: the hf engine (flash attention, the output projection fused with the loss, adapters
  computing in bf16, Liger's RMSNorm / SwiGLU / RoPE): no per-token logits, one chunk of them.

Activation checkpointing keeps only each layer's input (2 bytes x hidden a token) plus one
layer's activations while it is recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

GIB = 2**30
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
Method = Literal["lora", "ia3", "ptuning"]
Kernels = Literal["liger", "fused", "plain"]
# (c_h, c_i, logit bytes per token and vocabulary entry); fitted, see the module docstring.
ACTIVATION_COEFFICIENTS: dict[str, tuple[float, float, float]] = {
    "plain": (21.0, 10.0, 12.0),
    "fused": (17.8, 6.0, 0.0),
    # The hf engine with Liger installed: its SwiGLU recomputes the (tokens x intermediate)
    # products in backward instead of keeping them; fitted to the engine's own H100 peaks
    # (bench/RESULTS-perf.md: LoRA q/k/v/o at micro batch 8, 16, 32: 16.4, 30.3, 58.2 GiB).
    "liger": (17.8, 2.5, 0.0),
}
# The fused loss's transient: one chunk of 2**27 logits as bf16 product, fp32 probabilities and
# their bf16 copy (fast_kernels.CHUNK_ELEMENTS); Liger's chunks are smaller, so this errs high.
FUSED_LOSS_CHUNK_BYTES = 2**27 * 8
# Adapter parameters train in fp32 with AdamW: weight, gradient, two moments.
TRAINABLE_BYTES_PER_PARAMETER = 16


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a decoder-only transformer."""

    hidden_size: int
    num_layers: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    intermediate_size: int
    tied_embeddings: bool = True

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a Hugging Face ``config.json`` (Llama, Mistral, Qwen and alike)."""
        heads = config["num_attention_heads"]
        return cls(
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            vocab_size=config["vocab_size"],
            num_attention_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            intermediate_size=config["intermediate_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def kv_size(self) -> int:
        return self.hidden_size // self.num_attention_heads * self.num_kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one layer, by its usual module name."""
        h, kv, i = self.hidden_size, self.kv_size, self.intermediate_size
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return embeddings + self.num_layers * per_layer + self.hidden_size


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by kind; ``total`` is the estimated peak."""

    weights: int
    trainable_state: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable_state + self.activations + self.logits

    @property
    def total_gib(self) -> float:
        return self.total / GIB


def trainable_parameters(model: ModelShape, method: Method, lora_rank: int = 16,
                         target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                         num_virtual_tokens: int = 10, encoder_hidden_size: int = 128) -> int:
    """Adapter parameter count (peft's LoRA, IA3 and p-tuning prompt encoder)."""
    shapes = model.linear_shapes()
    if method == "lora":
        return model.num_layers * sum(lora_rank * sum(shapes[name]) for name in target_modules)
    if method == "ia3":
        # One scale per output feature, or per input feature for the feed-forward target.
        ia3 = {"k_proj": shapes["k_proj"][1], "v_proj": shapes["v_proj"][1], "down_proj": shapes["down_proj"][0]}
        return model.num_layers * sum(ia3.get(name, shapes[name][1]) for name in target_modules)
    if method == "ptuning":
        h, e = model.hidden_size, encoder_hidden_size
        return num_virtual_tokens * h + (h * e + e) + (e * e + e) + (e * h + h)
    raise ValueError(f"unknown method {method!r}")


def estimate_memory(model: ModelShape, seq_length: int, micro_batch_size: int, *, precision: str = "bf16",
                    method: Method = "lora", activation_checkpointing: bool = False, kernels: Kernels = "fused",
                    lora_rank: int = 16, target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                    num_virtual_tokens: int = 10) -> MemoryEstimate:
    """Peak allocated memory of one GPU running one micro batch of ``micro_batch_size`` x ``seq_length`` tokens.

    With packing, a micro batch is ``micro_batch_size`` rows of ``seq_length`` tokens: the same bound.
    """
    if precision not in BYTES:
        raise ValueError(f"precision must be one of {sorted(BYTES)}, not {precision!r}")
    c_h, c_i, c_v = ACTIVATION_COEFFICIENTS[kernels]
    scale = BYTES[precision] / 2  # coefficients are for 16-bit activations
    if method == "ptuning":
        seq_length += num_virtual_tokens
    tokens = seq_length * micro_batch_size
    h, i = model.hidden_size, model.intermediate_size
    per_layer = (c_h * h + c_i * i) * scale
    if method == "ia3":
        # peft's IA3 scales in fp32: fp32 copies of the scaled k/v outputs and of down_proj's input.
        per_layer += 4 * (2 * model.kv_size + i)
    if kernels == "liger" and method == "lora" and "down_proj" in target_modules:
        # A LoRA on down_proj keeps its (tokens x intermediate) input, which Liger would recompute.
        per_layer += 2 * i * scale
    if activation_checkpointing:
        activations = tokens * (model.num_layers * 2 * h * scale + per_layer)
    else:
        activations = tokens * model.num_layers * per_layer
    logits = tokens * model.vocab_size * c_v if c_v else FUSED_LOSS_CHUNK_BYTES
    adapters = trainable_parameters(model, method, lora_rank, target_modules, num_virtual_tokens)
    return MemoryEstimate(
        weights=model.parameters * BYTES[precision],
        trainable_state=adapters * TRAINABLE_BYTES_PER_PARAMETER,
        activations=int(activations),
        logits=int(logits),
    )


def largest_micro_batch(model: ModelShape, seq_length: int, budget_bytes: int, limit: int = 1024,
                        **options: Any) -> int:
    """The largest micro batch whose estimate fits in ``budget_bytes`` (0 if not even one does)."""
    best = 0
    for micro_batch_size in range(1, limit + 1):
        if estimate_memory(model, seq_length, micro_batch_size, **options).total > budget_bytes:
            break
        best = micro_batch_size
    return best
