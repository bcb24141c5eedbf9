"""HF -> .nemo conversion: which converter, its argv, and the host memory it needs.

Each converter takes ``--input_name_or_path`` and ``--output_path`` (never the Launcher's
``--in-file``/``--out-file``, which these scripts reject) and ``--precision``, always passed
explicitly because the defaults differ per converter and per container.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftpipe.spec_issues import SpecError
from peftpipe.engines.nemo.profiles import Converter, Profile

# HF `architectures` entries and `model_type` values -> converter name.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral_7b", "MixtralForCausalLM": "mixtral",
    "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2", "Qwen2ForCausalLM": "qwen2",
    "FalconForCausalLM": "falcon", "RWForCausalLM": "falcon", "GPTBigCodeForCausalLM": "starcoder",
    "Starcoder2ForCausalLM": "starcoder2",
}
MODEL_TYPES = {
    "llama": "llama", "mistral": "mistral_7b", "mixtral": "mixtral", "gemma": "gemma", "gemma2": "gemma2",
    "qwen2": "qwen2", "falcon": "falcon", "RefinedWeb": "falcon", "RefinedWebModel": "falcon",
    "gpt_bigcode": "starcoder", "starcoder2": "starcoder2",
}

# Host bytes per parameter while converting: the HF model loaded in fp32 (from_pretrained without
# torch_dtype, 4), the NeMo model built on CPU in fp32 (use_cpu_initialization, 4) and its cast to
# the target precision (up to 2). An estimate read from the scripts, not measured.
CONVERT_BYTES_PER_PARAM = 10
CONVERT_BASE_GIB = 8  # Python, torch, NeMo imports and the tokenizer


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))


def converter_name(hf_config: dict[str, Any]) -> str | None:
    for architecture in hf_config.get("architectures") or []:
        if architecture in ARCHITECTURES:
            return ARCHITECTURES[architecture]
    return MODEL_TYPES.get(hf_config.get("model_type", ""))


def choose_converter(hf_config: dict[str, Any], profile: Profile) -> Converter:
    name = converter_name(hf_config)
    label = ", ".join(hf_config.get("architectures") or []) or hf_config.get("model_type") or "unknown"
    if name is None:
        raise SpecError.single("model", f"{label} has no HF -> .nemo converter in NeMo",
                           f"use one of {', '.join(sorted(set(ARCHITECTURES)))}, or convert it yourself and set"
                           " nemo.nemo_path")
    if name not in profile.converters:
        newer = [p for p in ("24.07", "24.09") if p != profile.name]
        raise SpecError.single("nemo.profile", f"container {profile.name} has no {name} converter ({label})",
                           f"use profile {' or '.join(newer)} with its image, or set nemo.nemo_path to a converted"
                           " .nemo")
    return profile.converters[name]


def _first(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


@dataclass(frozen=True)
class Shape:
    """The sizes that decide parameter count and which parallel layouts are valid."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    intermediate: int
    head_dim: int
    experts: int
    gated_mlp: bool
    tied_embeddings: bool


def model_shape(hf_config: dict[str, Any]) -> Shape:
    hidden = int(_first(hf_config, "hidden_size", "n_embd", "d_model"))
    heads = int(_first(hf_config, "num_attention_heads", "n_head", "num_heads"))
    kv_default = 1 if hf_config.get("multi_query") else heads
    kv_heads = int(_first(hf_config, "num_key_value_heads", "num_kv_heads", "n_head_kv", default=kv_default))
    model_type = hf_config.get("model_type", "")
    # falcon and gpt_bigcode have a plain two-matrix MLP of 4h; the llama family a gated three-matrix one.
    gated = model_type not in ("falcon", "RefinedWeb", "RefinedWebModel", "gpt_bigcode", "starcoder2")
    return Shape(
        hidden=hidden,
        layers=int(_first(hf_config, "num_hidden_layers", "n_layer", "num_layers")),
        heads=heads,
        kv_heads=kv_heads,
        vocab=int(hf_config["vocab_size"]),
        intermediate=int(_first(hf_config, "intermediate_size", "n_inner", "ffn_hidden_size", default=4 * hidden)),
        head_dim=int(_first(hf_config, "head_dim", default=hidden // heads)),
        experts=int(_first(hf_config, "num_local_experts", default=1)),
        gated_mlp=gated,
        tied_embeddings=bool(hf_config.get("tie_word_embeddings", model_type in ("gemma", "gemma2", "gpt_bigcode"))),
    )


def parameter_count(hf_config: dict[str, Any]) -> int:
    """Weights of a decoder-only transformer from its config (biases ignored: well under 0.1 %)."""
    s = model_shape(hf_config)
    attention = s.hidden * s.heads * s.head_dim * 2 + s.hidden * s.kv_heads * s.head_dim * 2
    mlp_one = (3 if s.gated_mlp else 2) * s.hidden * s.intermediate
    mlp = s.experts * mlp_one + (s.hidden * s.experts if s.experts > 1 else 0)
    norms = 2 * s.hidden
    embeddings = s.vocab * s.hidden * (1 if s.tied_embeddings else 2)
    return s.layers * (attention + mlp + norms) + embeddings + s.hidden


def host_memory_gib(hf_config: dict[str, Any]) -> int:
    """Host memory a CPU conversion needs, rounded up to whole GiB."""
    return math.ceil(parameter_count(hf_config) * CONVERT_BYTES_PER_PARAM / 2**30) + CONVERT_BASE_GIB


def uses_llama31_rope(hf_config: dict[str, Any]) -> bool:
    scaling = hf_config.get("rope_scaling") or {}
    return (scaling.get("rope_type") or scaling.get("type")) == "llama3"


def converter_argv(converter: Converter, input_dir: Path, output_path: Path, precision: str,
                   hf_config: dict[str, Any], gpus: int = 0) -> list[str]:
    """Everything after the script path; flags as the profile's converter declares them."""
    if precision not in converter.precisions:
        raise SpecError.single("nemo.convert.precision", f"{precision} is not accepted by the {converter.name} converter"
                           f" (--precision {'/'.join(converter.precisions)})",
                           f"set nemo.convert.precision to one of {', '.join(converter.precisions)}")
    argv = ["--input_name_or_path", str(input_dir), "--output_path", str(output_path), "--precision", precision]
    if converter.tokenizer_path:
        # gemma's script writes --tokenizer_path into model.tokenizer.model unchecked.
        argv += ["--tokenizer_path", str(input_dir / "tokenizer.model")]
    if converter.llama31:
        # type=bool: bool("False") is True, so the only false value is the empty string.
        argv.append("--llama31=True" if uses_llama31_rope(hf_config) else "--llama31=")
    if "--cpu" in converter.flag_names and gpus == 0:
        argv.append("--cpu")
    return argv


def precision_caveat(converter: Converter, precision: str, gpus: int) -> str | None:
    """What the written .nemo will really hold, when that differs from what was asked."""
    if precision == "bf16" and converter.cpu_bf16_becomes_fp16 and gpus == 0:
        return (f"The {converter.name} converter writes fp16, not bf16, on a node without a bf16-capable GPU"
                " (torch.cuda.is_bf16_supported() is False there; it only logs 'BF16 is not supported on this"
                " device. Using FP16 instead.'). Set nemo.convert.gpus: 1 on an Ampere or newer GPU to keep bf16.")
    return None
