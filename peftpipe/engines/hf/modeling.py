"""The model the hf engine trains, and its loss: shared by the training script and bench/.

``prepare_model`` turns a loaded base model into the PEFT model with the engine's fast paths:
- the output projection is taken out of the forward pass (the model returns hidden states) and
  applied only at label positions, fused with the cross-entropy (``fast_kernels``); answer-only
  training then never computes logits for prompt tokens;
- attention through ``fast_kernels.attention_forward`` (flash, variable-length for packed batches);
- Liger's fused RMSNorm / SwiGLU / RoPE on CUDA when installed;
- adapters keep fp32 master weights but compute in the autocast precision: peft's default casts
  every adapter input to fp32, which costs several full-size copies and fp32 matrix products per
  adapted layer;
- projections of one input (q/k/v, gate/up) computed together with their LoRA branches folded
  into the base products (``fused_projections``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from peftpipe.engines.hf.fast_kernels import (
    apply_liger,
    apply_liger_rope,
    flash_varlen_available,
    keep_layer_norms_in_storage_dtype,
    linear_cross_entropy_sum,
    liger_usable,
    packed_kwargs,
    register_attention,
)
from peftpipe.engines.hf.fused_projections import fuse_projections, projection_of
from peftpipe.engines.hf.fused_qkv import install_split_heads
from peftpipe.model_inspect import layout_of
from peftpipe.model_fit import resolved_peft
from peftpipe.model_layout import ModelLayout
from peftpipe.engines.hf.packing import Example, collate, label_tokens, plan_padded

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def load_base_model(model_path: str, precision: str, device: torch.device, quantize_base: bool = False) -> Any:
    """The base model with the attention its family supports: eager where the logits are soft-capped
    (Gemma 2: neither PyTorch's flash kernel nor SDPA applies the cap), SDPA otherwise (``prepare_model``
    then routes it through the engine's variable-length kernel where the model allows).

    ``quantize_base`` (the memory ladder's 4-bit rung, QLoRA): the decoder's linear weights stored in NF4
    with double quantization by bitsandbytes, computed in ``precision``; embeddings, norms and the output
    projection stay in ``precision``. LoRA then wraps bitsandbytes' ``Linear4bit`` (peft's own layer).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    attention = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    if quantize_base:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=DTYPES[precision])
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[precision], attn_implementation=attention,
                                                     quantization_config=quantization, device_map={"": str(device)})
        if device.type == "cpu":
            # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for CPU inference at its first
            # eval-mode forward (the validation pass between training steps), in place, and only for out
            # features divisible by its block: keep the training layout.
            for module in model.modules():
                if hasattr(module, "support_avx512bf16_for_cpu"):
                    module.support_avx512bf16_for_cpu = False
        return model
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[precision], attn_implementation=attention)
    return model.to(device)


def peft_config(peft: dict[str, Any]) -> Any:
    from peft import IA3Config, LoraConfig, PromptEncoderConfig, TaskType

    method = peft["method"]
    if method == "lora":
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=peft["r"],
            lora_alpha=peft["alpha"],
            lora_dropout=peft["dropout"],
            target_modules=peft["target_modules"],
        )
    if method == "ia3":
        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=peft["target_modules"],
            feedforward_modules=peft["feedforward_modules"],
        )
    if method == "ptuning":
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=peft["num_virtual_tokens"],
            encoder_hidden_size=peft["encoder_hidden_size"],
        )
    raise ValueError(f"peft method {method!r} is not supported by the hf engine")


def autocast(device: torch.device, precision: str) -> Any:
    enabled = precision in ("bf16", "fp16")
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision], enabled=enabled)


@dataclass
class Prepared:
    """The PEFT model and what its loss needs: the detached output projection (None when the
    model still returns logits) and whether Liger's loss kernel is used; the peft settings with
    ``auto`` resolved, whether packed rows keep records apart in this family, and the fast paths."""

    model: Any
    head_weight: torch.Tensor | None
    use_liger: bool
    features: list[str] = field(default_factory=list)
    peft: dict[str, Any] = field(default_factory=dict)
    packing_supported: bool = True
    layout: ModelLayout | None = None


def choose_attention(base: Any, layout: ModelLayout, device: torch.device) -> tuple[str, bool]:
    """Set the attention implementation the family supports; returns (description, packing supported).

    Packed rows need attention that keeps records apart: the engine's variable-length kernel where
    the model calls attention through transformers' interface (and so passes ``cu_seq_lens`` on),
    or, for eager attention, the block-causal mask transformers derives from restarting position ids.
    """
    if layout.attention_softcap is not None:
        return ("eager attention (soft-capped logits, which the flash and SDPA kernels do not apply);"
                " packed rows masked record by record from their position ids"), True
    if layout.supports_attention_backend:
        base.set_attn_implementation(register_attention())
        return ("flash attention, variable-length for packed rows" if flash_varlen_available(device)
                else "SDPA attention, record by record for packed rows"), True
    return (f"SDPA attention ({layout.architecture} does not take a pluggable attention function, so packing"
            " is off for it)"), False


def detach_output_head(base: Any, peft: dict[str, Any]) -> torch.Tensor | None:
    """Replace the output projection by the identity and return its weight, or None if it must stay."""
    head = base.get_output_embeddings()
    adapted = "lm_head" in (peft.get("target_modules") or [])
    if adapted or not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    for name, child in base.named_children():
        if child is head:
            setattr(base, name, torch.nn.Identity())
            head.weight.requires_grad_(False)
            return head.weight
    return None


def prepare_model(base: Any, peft: dict[str, Any], device: torch.device, activation_checkpointing: bool,
                  use_liger: bool | None = None, fuse: bool = True) -> Prepared:
    """The trainable PEFT model around ``base`` (already on ``device``, in its precision).

    ``fuse=False`` keeps peft's own forward for every projection (bench/ compares the two).
    """
    from peft import get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    layout = layout_of(base)
    peft = resolved_peft(peft, layout)
    features = []
    use_liger = liger_usable(device) if use_liger is None else use_liger
    if use_liger and apply_liger(base):
        features.append("liger rmsnorm/swiglu/rope")
    elif use_liger and apply_liger_rope(base):
        features.append(f"liger rope (Liger has no {layout.model_type} patch; its rotary layout is Llama's)")
    elif use_liger:
        features.append(f"no liger kernels for {layout.model_type}")
    if keep_layer_norms_in_storage_dtype(base):
        features.append("LayerNorm in the weights' 16-bit dtype under autocast (fp32 statistics), not fp32")
    attention, packing_supported = choose_attention(base, layout, device)
    features.append(attention)
    head_weight = detach_output_head(base, peft)
    if head_weight is not None:
        features.append("fused output projection + cross-entropy on label positions"
                        + (" (liger)" if use_liger else " (chunked)"))
    if activation_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    model = get_peft_model(base, peft_config(peft))
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
    if fuse:
        features += describe_projection_paths(model, fuse_projections(model))
        if install_split_heads(model):
            features.append("fused query_key_value split into heads with one backward copy")
    return Prepared(model, head_weight, use_liger, features, peft, packing_supported, layout)


def describe_projection_paths(model: Any, groups: list[Any]) -> list[str]:
    """Which adapted projections take the fused path and which peft's own forward (by shape, not name:
    a plain frozen nn.Linear with one plain LoRA branch fuses; Conv1D, fan_in_fan_out and the like do not)."""
    from peft.tuners.lora.layer import LoraLayer

    leaves = {id(m): name.rsplit(".", 1)[-1] for name, m in model.named_modules()}

    def leaf(module: Any) -> str:
        return leaves[id(module)]

    # A group whose members peft computes in its own way (Conv1D's fan_in_fan_out, dropout, ...) runs
    # each member's own forward: it counts as the plain path.
    fast = [group for group in groups if all(projection_of(m) is not None for m in group.modules)]
    grouped = [[leaf(m) for m in group.modules] for group in fast]
    fused = {name for names in grouped for name in names}
    plain = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                    if isinstance(m, LoraLayer) and name.rsplit(".", 1)[-1] not in fused})
    lines = []
    if grouped:
        shared = ["/".join(names) for names in dict.fromkeys(tuple(n) for n in grouped) if len(names) > 1]
        single = sorted({names[0] for names in grouped if len(names) == 1})
        lines.append("projections with LoRA folded into the base GEMM: "
                     + ", ".join([f"{names} (one shared input)" for names in shared] + single))
    if plain:
        lines.append(f"plain peft path (no fused projection for this layout): {', '.join(plain)}")
    return lines


def loss_sum(model: Any, batch: dict[str, Any], head_weight: torch.Tensor | None, use_liger: bool) -> torch.Tensor:
    """Sum (not mean) of the label tokens' losses, so batches of any split add up to the same total."""
    # No key/value cache: training never reads it, and with one transformers skips the block-causal mask it
    # derives from packed position ids (the eager attention of soft-capped families relies on that mask).
    outputs = model(input_ids=batch["input_ids"], use_cache=False, **packed_kwargs(batch))
    states = outputs.logits  # hidden states when the output projection was detached
    # p-tuning prepends virtual tokens; the label positions index the last input_ids-width positions.
    states = states[:, -batch["input_ids"].shape[1] :, :]
    picked = states.reshape(-1, states.shape[-1]).index_select(0, batch["label_positions"])
    if head_weight is None:
        return torch.nn.functional.cross_entropy(picked.float(), batch["label_targets"], reduction="sum")
    return linear_cross_entropy_sum(picked, head_weight, batch["label_targets"], use_liger)


@torch.no_grad()
def mean_loss(model: Any, examples: list[Example], batch_size: int, pad_id: int, device: torch.device,
              precision: str, head_weight: torch.Tensor | None = None, use_liger: bool = False) -> float | None:
    """Answer-token mean loss over ``examples`` (padded batches)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    for rows in plan_padded(len(examples), batch_size):
        with autocast(device, precision):
            total += loss_sum(model, collate(examples, rows, pad_id, device, packed=False), head_weight, use_liger)
        tokens += sum(label_tokens(examples[i]) for row in rows for i in row)
    model.train(was_training)
    return float(total) / max(tokens, 1)
