"""What peftpipe needs to know about a model's architecture, read from the model itself (pure: no torch).

A :class:`ModelLayout` is produced by ``peftpipe.model_inspect`` from the model built on the
meta device from its ``config.json`` (no weights), so the memory estimate, the choice of LoRA
target modules and the check of explicit target modules work for every family transformers can
build: Llama-style separate ``q_proj``/``k_proj``/``v_proj``, GPT-NeoX's and Falcon's fused
``query_key_value``, GPT-2's Conv1D ``c_attn``, Phi-3's fused ``qkv_proj`` and ``gate_up_proj``,
mixture-of-experts blocks.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["attention", "mlp"]
AUTO = "auto"


@dataclass(frozen=True)
class Projection:
    """One projection module of a decoder layer, by its leaf name (what peft's target_modules match)."""

    name: str
    role: Role
    in_features: int
    out_features: int
    kind: Literal["linear", "conv1d"] = "linear"
    fused: Literal["", "qkv", "gate_up"] = ""  # several projections computed by one module
    count: int = 1  # modules of this name in one layer (shared experts, for instance)
    block: str = ""  # the layer's child holding it: self_attn, attention, mlp, ...


@dataclass(frozen=True)
class ModelLayout:
    model_type: str
    architecture: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    parameters: int  # unique parameters (tied embeddings counted once)
    embedding_parameters: int  # input embeddings plus an untied output projection
    tied_embeddings: bool
    gated_mlp: bool  # gate * up (SwiGLU/GeGLU) rather than one up projection and an activation
    parallel_residual: bool  # attention and MLP read the same input (GPT-NeoX, Falcon, Phi-2)
    experts: int  # routed experts per MoE layer (0: dense)
    attention_softcap: float | None  # Gemma 2's tanh soft-capping of attention logits
    sliding_window: int | None
    supports_attention_backend: bool  # attention goes through transformers' pluggable interface
    projections: tuple[Projection, ...] = ()
    # Every module's dotted name, layer indices written as "*" (model.layers.*.self_attn.q_proj).
    module_names: tuple[str, ...] = field(default=())

    @property
    def fused_qkv(self) -> bool:
        return any(p.fused == "qkv" for p in self.projections)

    def projection(self, name: str, role: Role = "mlp") -> Projection | None:
        named = [p for p in self.projections if p.name == name]
        return next((p for p in named if p.role == role), named[0] if named else None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelLayout:
        projections = tuple(Projection(**p) for p in data.get("projections", ()))
        return cls(**{**data, "projections": projections, "module_names": tuple(data.get("module_names", ()))})

    def describe(self) -> str:
        attention = ("fused q/k/v " + "/".join(p.name for p in self.projections if p.fused == "qkv")
                     if self.fused_qkv else f"{self.num_attention_heads} heads, {self.num_kv_heads} key/value heads")
        extras = [e for e in (
            "parallel residual" if self.parallel_residual else "",
            "Conv1D projections" if any(p.kind == "conv1d" for p in self.projections) else "",
            f"{self.experts} experts" if self.experts else "",
            f"attention soft-capping {self.attention_softcap:g}" if self.attention_softcap else "",
            "tied embeddings" if self.tied_embeddings else "",
        ) if e]
        return (f"{self.architecture} ({self.model_type}): {self.parameters / 1e6:,.1f}M parameters,"
                f" {self.num_layers} layers, hidden {self.hidden_size}, intermediate {self.intermediate_size},"
                f" {attention}" + (f", {', '.join(extras)}" if extras else ""))


def write_layout(layout: ModelLayout, path: Path) -> None:
    path.write_text(json.dumps(layout.to_json(), indent=2) + "\n")


# --- target modules -------------------------------------------------------------------------------


def auto_lora_targets(layout: ModelLayout) -> list[str]:
    """Every attention and MLP projection of the family, by leaf name, in layer order."""
    names: list[str] = []
    for projection in layout.projections:
        if projection.name not in names:
            names.append(projection.name)
    return names


def auto_ia3_targets(layout: ModelLayout) -> tuple[list[str], list[str]]:
    """IA3's (target, feed-forward) modules: the key and value outputs and the MLP's down projection input.

    With fused q/k/v the whole fused output is scaled (peft does the same for GPT-NeoX and GPT-2).
    """
    attention = [p for p in layout.projections if p.role == "attention"]
    fused = [p.name for p in attention if p.fused == "qkv"]
    key_value = fused or [p.name for p in attention if p.name.startswith(("k", "v")) or p.name.endswith(("_k", "_v"))]
    mlp = [p for p in layout.projections if p.role == "mlp"]
    # The down projection reads the intermediate features and writes the hidden size.
    down = [p.name for p in mlp if p.out_features == layout.hidden_size and p.in_features != layout.hidden_size]
    down = list(dict.fromkeys(down))[:1]
    # GPT-2 calls both output projections c_proj: name the MLP's by its block, or attention's would be scaled too.
    attention_names = {p.name for p in attention}
    down = [f"{layout.projection(name).block}.{name}" if name in attention_names else name for name in down]
    return key_value + down, down


def unknown_target_modules(layout: ModelLayout, names: list[str]) -> list[str]:
    """Names peft would match against no module of this model (peft itself fails only in the job).

    peft adapts a module whose dotted name equals a target or ends with ``.`` + the target.
    """
    def matches(name: str) -> bool:
        pattern = re.sub(r"(^|\.)\d+(\.|$)", r"\1*\2", name)
        return any(full == pattern or full.endswith("." + pattern) for full in layout.module_names)

    return [name for name in names if not matches(name)]


def target_hint(layout: ModelLayout) -> str:
    return ", ".join(auto_lora_targets(layout)) or "none found"
