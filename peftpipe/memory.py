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

The shape comes from the model itself (``ModelShape.from_layout``: the meta-device model's
projections and exact parameter count), so fused ``query_key_value`` (GPT-NeoX, Falcon), Conv1D
``c_attn`` (GPT-2), untied embeddings and GQA are counted as they are. An MLP without a gate
(GPT-NeoX, GPT-2, Falcon: one up projection and a GELU) keeps about half the (tokens x
intermediate) tensors of a gated one (``UNGATED_MLP_FACTOR``); with the engine's coefficients this
is within 7 % of the OpenCALM-3B and rinna-3.6B shapes' peaks on an H200 (bench/RESULTS-families.md). Eager attention (Gemma 2's
soft-capping) keeps each head's (seq x seq) scores and probabilities. The engine keeps plain
``nn.LayerNorm`` outputs in 16 bits under autocast (``fast_kernels.StorageDtypeLayerNorm``), where
autocast alone would keep them in fp32: ``LAYER_NORM_16BIT_SAVING`` bytes per token and hidden unit
of each layer less (its two norms' fp32 outputs); with it the estimate is within 8 % of the
OpenCALM-3B and rinna-3.6B engine peaks measured with that change (bench/RESULTS-families.md).

Activation checkpointing keeps only each layer's input (2 bytes x hidden a token) plus what one
layer holds while it is recomputed and differentiated: ``RECOMPUTE_COEFFICIENTS`` (bytes a token,
per hidden and intermediate unit), fitted to the engine's checkpointed and offloaded peaks on an
H200 (Llama-3.2-1B and Llama-3-8B shapes, micro batch 1 to 64, seq 2048, Liger installed:
bench/RESULTS-ladder.md, every point within 0.04 GiB); kernels without a fit use one layer's
activations. With Liger, the fused loss's chunk adds nothing measurable at the peak.

The rungs above checkpointing (``memory_ladder.py``):
- offload: the checkpointed inputs live in host memory; ``OFFLOAD_RESIDENT_INPUTS`` of them are on
  the GPU at a time (the one being copied out, the one brought back for its layer's backward);
- shard (FSDP2 over ``shard_ranks`` GPUs): each GPU holds its share of the weights and adapter
  state plus ``SHARD_GATHERED_LAYERS`` layers gathered whole (the one computing, the one prefetched);
- quantize_base: the layers' projection weights in NF4 (``NF4_BYTES_PER_PARAMETER``, block scales
  included), embeddings and output projection in 16 bits, plus one projection dequantized.
The shard and 4-bit terms are arithmetic from those formats, not yet held to measured peaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from peftpipe.model_layout import ModelLayout

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
# An MLP with one up projection and GELU keeps its up output and the activation's (2 tensors of
# tokens x intermediate); a gated one keeps gate, up, the activation and the product (4).
UNGATED_MLP_FACTOR = 0.5
# Two norms per layer whose outputs the engine keeps in 16 bits instead of autocast's fp32: 2 x 2 bytes.
LAYER_NORM_16BIT_SAVING = 4.0
# Eager attention keeps, per token, head and key position, the 16-bit scores, their fp32 softmax and
# the 16-bit probabilities (and Gemma 2's tanh): fitted to Gemma-2-2B's engine peaks on an H200
# (bench/RESULTS-families.md: micro batch 2 and 4 at seq 2048, 26.0 and 47.0 GiB).
EAGER_ATTENTION_BYTES = 9
# The fused loss's transient: one chunk of 2**27 logits as bf16 product, fp32 probabilities and
# their bf16 copy (fast_kernels.CHUNK_ELEMENTS); Liger's chunks are smaller, so this errs high.
FUSED_LOSS_CHUNK_BYTES = 2**27 * 8
# What one checkpointed layer holds while recomputed and differentiated: (c_h, c_i) bytes a token, fitted
# (module docstring); the same fit gave 2.08 resident inputs when offloaded and a constant of 0.05 GiB.
RECOMPUTE_COEFFICIENTS: dict[str, tuple[float, float]] = {"liger": (11.8, 6.3)}
# Checkpointed layer inputs on the GPU at a time when they are offloaded to host memory.
OFFLOAD_RESIDENT_INPUTS = 2
SHARD_GATHERED_LAYERS = 2
# NF4: 4 bits a weight plus one fp32 scale per 64 weights (bitsandbytes' default block).
NF4_BYTES_PER_PARAMETER = 0.5 + 4 / 64
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
    # (name, block, in, out) of each projection of one layer; None: Llama's q/k/v/o/gate/up/down.
    projections: tuple[tuple[str, str, int, int], ...] | None = None
    total_parameters: int | None = None  # exact, from the model; None: counted from the Llama layout
    gated_mlp: bool = True
    eager_attention: bool = False
    head_dim: int | None = None
    layer_norm: bool = False  # plain nn.LayerNorm (GPT-NeoX, GPT-2, Falcon, Phi-2) rather than RMSNorm

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a Llama-style ``config.json`` alone (Llama, Mistral, Qwen and alike); see ``from_layout``."""
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

    @classmethod
    def from_layout(cls, layout: ModelLayout) -> ModelShape:
        """From the layout of the model built on the meta device: any family transformers builds."""
        return cls(
            hidden_size=layout.hidden_size,
            num_layers=layout.num_layers,
            vocab_size=layout.vocab_size,
            num_attention_heads=layout.num_attention_heads,
            num_kv_heads=layout.num_kv_heads,
            intermediate_size=layout.intermediate_size,
            tied_embeddings=layout.tied_embeddings,
            projections=tuple((p.name, p.block, p.in_features, p.out_features) for p in layout.projections),
            total_parameters=layout.parameters,
            gated_mlp=layout.gated_mlp,
            eager_attention=layout.attention_softcap is not None,
            head_dim=layout.head_dim,
            layer_norm=layout.layer_norm,
        )

    @property
    def kv_size(self) -> int:
        return (self.head_dim or self.hidden_size // self.num_attention_heads) * self.num_kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one layer, by its module name."""
        if self.projections is not None:
            return {name: (fan_in, fan_out) for name, _, fan_in, fan_out in self.projections}
        h, kv, i = self.hidden_size, self.kv_size, self.intermediate_size
        q = (self.head_dim or h // self.num_attention_heads) * self.num_attention_heads
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def matching(self, target: str) -> list[tuple[int, int]]:
        """(in, out) of every projection of one layer that peft adapts for ``target`` (GPT-2 has two
        ``c_proj``: ``c_proj`` adapts both, ``mlp.c_proj`` one)."""
        if self.projections is None:
            shapes = self.linear_shapes()
            leaf = target.rsplit(".", 1)[-1]
            return [shapes[leaf]] if leaf in shapes else []
        return [(fan_in, fan_out) for name, block, fan_in, fan_out in self.projections
                if target == name or f"{block}.{name}".endswith(target)]

    @property
    def parameters(self) -> int:
        if self.total_parameters is not None:
            return self.total_parameters
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


def _shapes_of(model: ModelShape, name: str) -> list[tuple[int, int]]:
    shapes = model.matching(name)
    if not shapes:
        raise ValueError(f"{name!r} is no projection of this model (it has {', '.join(model.linear_shapes())})")
    return shapes


def trainable_parameters(model: ModelShape, method: Method, lora_rank: int = 16,
                         target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                         num_virtual_tokens: int = 10, encoder_hidden_size: int = 128,
                         feedforward_modules: tuple[str, ...] = ("down_proj",)) -> int:
    """Adapter parameter count (peft's LoRA, IA3 and p-tuning prompt encoder)."""
    if method == "lora":
        return model.num_layers * sum(lora_rank * (fan_in + fan_out) for name in target_modules
                                      for fan_in, fan_out in _shapes_of(model, name))
    if method == "ia3":
        # One scale per output feature, or per input feature for a feed-forward target.
        return model.num_layers * sum(shape[0 if name in feedforward_modules else 1] for name in target_modules
                                      for shape in _shapes_of(model, name))
    if method == "ptuning":
        h, e = model.hidden_size, encoder_hidden_size
        return num_virtual_tokens * h + (h * e + e) + (e * e + e) + (e * h + h)
    raise ValueError(f"unknown method {method!r}")


def estimate_memory(model: ModelShape, seq_length: int, micro_batch_size: int, *, precision: str = "bf16",
                    method: Method = "lora", activation_checkpointing: bool = False, kernels: Kernels = "fused",
                    lora_rank: int = 16, target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                    num_virtual_tokens: int = 10, feedforward_modules: tuple[str, ...] = ("down_proj",),
                    offload_activations: bool = False, shard_ranks: int = 1, quantize_base: bool = False
                    ) -> MemoryEstimate:
    """Peak allocated memory of one GPU running one micro batch of ``micro_batch_size`` x ``seq_length`` tokens.

    With packing, a micro batch is ``micro_batch_size`` rows of ``seq_length`` tokens: the same bound.
    ``offload_activations`` needs ``activation_checkpointing`` (it moves the checkpointed inputs).
    """
    if offload_activations and not activation_checkpointing:
        raise ValueError("offload_activations moves checkpointed activations: it needs activation_checkpointing")
    if precision not in BYTES:
        raise ValueError(f"precision must be one of {sorted(BYTES)}, not {precision!r}")
    c_h, c_i, c_v = ACTIVATION_COEFFICIENTS[kernels]
    scale = BYTES[precision] / 2  # coefficients are for 16-bit activations
    if method == "ptuning":
        seq_length += num_virtual_tokens
    tokens = seq_length * micro_batch_size
    h, i = model.hidden_size, model.intermediate_size
    per_layer = (c_h * h + c_i * i * (1.0 if model.gated_mlp else UNGATED_MLP_FACTOR)) * scale
    if model.layer_norm and kernels != "plain":
        per_layer -= LAYER_NORM_16BIT_SAVING * h * scale
    if model.eager_attention:
        per_layer += EAGER_ATTENTION_BYTES * model.num_attention_heads * seq_length * scale
    if method == "ia3":
        # peft's IA3 scales in fp32: fp32 copies of the scaled k/v outputs and of down_proj's input.
        per_layer += 4 * (2 * model.kv_size + i)
    if kernels == "liger" and method == "lora" and any(name in feedforward_modules for name in target_modules):
        # A LoRA on down_proj keeps its (tokens x intermediate) input, which Liger would recompute.
        per_layer += 2 * i * scale
    if activation_checkpointing:
        kept_inputs = OFFLOAD_RESIDENT_INPUTS if offload_activations else model.num_layers
        recompute = per_layer
        if kernels in RECOMPUTE_COEFFICIENTS and model.gated_mlp and not model.eager_attention and method == "lora":
            r_h, r_i = RECOMPUTE_COEFFICIENTS[kernels]
            recompute = (r_h * h + r_i * i) * scale
        activations = tokens * (kept_inputs * 2 * h * scale + recompute)
    else:
        activations = tokens * model.num_layers * per_layer
    # Liger's loss chunks are small and freed before the backward pass reaches its peak (fitted: no term).
    logits = tokens * model.vocab_size * c_v if c_v else (0 if kernels == "liger" else FUSED_LOSS_CHUNK_BYTES)
    adapters = trainable_parameters(model, method, lora_rank, target_modules, num_virtual_tokens,
                                    feedforward_modules=feedforward_modules)
    weights = _weight_bytes(model, BYTES[precision], quantize_base)
    if shard_ranks > 1:
        layer = weights / max(model.num_layers, 1)  # errs high: embeddings counted into the layer's share
        weights = weights / shard_ranks + SHARD_GATHERED_LAYERS * layer
    return MemoryEstimate(
        weights=int(weights),
        trainable_state=adapters * TRAINABLE_BYTES_PER_PARAMETER // shard_ranks,
        activations=int(activations),
        logits=int(logits),
    )


def _weight_bytes(model: ModelShape, bytes_per_weight: int, quantize_base: bool) -> float:
    if not quantize_base:
        return model.parameters * bytes_per_weight
    projections = model.num_layers * sum(a * b for a, b in model.linear_shapes().values())
    largest = max(a * b for a, b in model.linear_shapes().values())  # dequantized for its product
    return (model.parameters - projections) * bytes_per_weight + projections * NF4_BYTES_PER_PARAMETER \
        + largest * bytes_per_weight


def largest_micro_batch(model: ModelShape, seq_length: int, budget_bytes: int, limit: int = 1024,
                        **options: Any) -> int:
    """The largest micro batch whose estimate fits in ``budget_bytes`` (0 if not even one does)."""
    best = 0
    for micro_batch_size in range(1, limit + 1):
        if estimate_memory(model, seq_length, micro_batch_size, **options).total > budget_bytes:
            break
        best = micro_batch_size
    return best
