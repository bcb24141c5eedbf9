"""The run spec's ``peft`` section: the method (LoRA, IA3, p-tuning, adapter) and its settings.

Kept beside :mod:`peftpipe.spec`, which re-exports every name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from peftpipe.spec_base import StrictModel


TargetModules = list[str] | Literal["auto"]


def _names_or_auto(value: object) -> object:
    """One clear error for a string that is not ``auto`` (instead of one per member of the union)."""
    if isinstance(value, str) and value != "auto":
        raise ValueError(f"{value!r} is neither auto nor a list of module names. Fix: write auto or [name, ...],"
                         f" e.g. [{value}]")
    return value


class LoraSpec(StrictModel):
    """LoRA (peft.method: lora): low-rank update matrices added to the target projections."""

    r: int = Field(8, gt=0, description="Rank of the update matrices.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch's input.", examples=[0.05])
    target_modules: TargetModules = Field(
        "auto",
        min_length=1,
        description="Module names to adapt, checked against the model; auto: every attention and MLP projection"
        " of the model's family (q/k/v/o + gate/up/down for Llama, query_key_value/dense/dense_h_to_4h/"
        "dense_4h_to_h for GPT-NeoX, c_attn/c_proj/c_fc for GPT-2), found by inspecting the model; the run"
        " records the names chosen.",
        examples=[["q_proj", "k_proj", "v_proj", "o_proj"]],
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names_or_auto(cls, value: object) -> object:
        return _names_or_auto(value)


class Ia3Spec(StrictModel):
    """IA3 (peft.method: ia3): learned vectors that rescale the target modules' activations."""

    target_modules: TargetModules = Field(
        "auto", min_length=1, description="auto: the key and value projections (or the fused q/k/v) and the MLP's"
        " down projection, found by inspecting the model.", examples=[["query_key_value", "dense_4h_to_h"]])
    feedforward_modules: TargetModules = Field(
        "auto", description="Subset of target_modules scaled on their input; auto: the MLP's down projection.",
        examples=[["dense_4h_to_h"]],
    )

    @field_validator("target_modules", "feedforward_modules", mode="before")
    @classmethod
    def _names_or_auto(cls, value: object) -> object:
        return _names_or_auto(value)


class PtuningSpec(StrictModel):
    """P-tuning (peft.method: ptuning): virtual prompt tokens produced by a small encoder."""

    num_virtual_tokens: int = Field(10, gt=0, description="Virtual tokens prepended to every prompt.")
    encoder_hidden_size: int = Field(128, gt=0, description="Hidden size of the prompt encoder MLP.")


class AdapterSpec(StrictModel):
    """NeMo's parallel adapter (peft.method: adapter; nemo engine only)."""

    dim: int = Field(32, gt=0, description="Bottleneck dimension (adapter_tuning.adapter_dim).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the adapter.")
    norm_position: Literal["pre", "post"] = Field("pre", description="Where the adapter's layer norm sits.")
    # NeMo's YAML also names linear_adapter, but no 1.x peft_config.py reads `type`: it is always parallel.
    type: Literal["parallel_adapter"] = Field("parallel_adapter", description="The adapter kind; NeMo 1.x"
                                              " only builds the parallel adapter.")


PeftMethod = Literal["lora", "ia3", "ptuning", "adapter"]


class PeftSpec(StrictModel):
    """The parameter-efficient method; only the block of the chosen method is used."""

    method: PeftMethod = Field("lora", description="lora, ia3, ptuning (hf and nemo engines) or adapter (nemo"
                                                    " only).")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Settings of method lora.")
    ia3: Ia3Spec = Field(default_factory=Ia3Spec, description="Settings of method ia3.")
    ptuning: PtuningSpec = Field(default_factory=PtuningSpec, description="Settings of method ptuning.")
    adapter: AdapterSpec = Field(default_factory=AdapterSpec, description="Settings of method adapter (nemo).")

