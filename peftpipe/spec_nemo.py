"""The run spec's ``nemo:`` section, read only when ``engine: nemo``.

The container image itself is ``execution.slurm.container.image``; this section names which
NeMo container that image is (the profile), so that every command is rendered for it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from peftpipe.spec_base import StrictModel
from peftpipe.spec_execution import MEMORY_PATTERN

NemoProfileName = Literal["24.03", "24.05", "24.07", "24.09"]
NemoPrecision = Literal["16", "bf16", "32"]


def _precision_text(value: object) -> object:
    """YAML reads ``precision: 16`` as an int; NeMo's spelling is the string."""
    return str(value) if isinstance(value, int) else value


class NemoConvertSpec(StrictModel):
    """HF -> .nemo conversion, skipped when ``nemo.nemo_path`` names an existing .nemo."""

    precision: NemoPrecision | None = Field(
        None, description="--precision of the written .nemo: 16, bf16 or 32; default: the training precision."
    )
    gpus: int = Field(0, ge=0, le=1, description="0: convert on a CPU node (llama, mistral, mixtral, qwen2 then write"
                                                 " fp16 when bf16 is asked); 1: on one GPU.")
    mem: str | None = Field(None, description="Host memory for the job; default: an estimate of an fp32 load of the"
                                              " model (about 10 bytes per parameter).",
                              examples=["160G"])

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: object) -> object:
        return _precision_text(value)

    @field_validator("mem")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not MEMORY_PATTERN.match(value):
            raise ValueError(f"{value!r} is not a memory size. Fix: write it like 160G")
        return value


class NemoGenerationSpec(StrictModel):
    """megatron_gpt_generate.py's ``inference.*`` settings; null keeps the profile's default (recorded)."""

    repetition_penalty: float | None = Field(
        None, gt=0, description="null: NeMo's default, 1.2 in 24.03 and 1.0 later; 1.0 means no penalty.",
        examples=[1.0],
    )
    top_k: int | None = Field(None, ge=0, description="Sampling only (evaluation.greedy: false).", examples=[50])
    top_p: float | None = Field(None, gt=0, le=1, description="Sampling only.", examples=[0.9])
    temperature: float | None = Field(None, gt=0, description="Sampling only.", examples=[0.7])


class NemoSpec(StrictModel):
    """Which NeMo container runs the stages, model parallelism and NeMo-only PEFT settings."""

    profile: NemoProfileName | None = Field(
        None, description="The NeMo container the image holds: 24.03, 24.05, 24.07 or 24.09."
    )
    root: str = Field("/opt/NeMo", description="The NeMo checkout inside the container (or on a cluster venv's"
                                               " file system) that holds examples/ and scripts/.")
    nemo_path: str | None = Field(None, description="An existing base .nemo; conversion is skipped.",
                                   examples=["/shared/models/llama2-7b.nemo"])
    tensor_parallel_size: int = Field(1, gt=0, description="model.tensor_model_parallel_size.")
    pipeline_parallel_size: int = Field(1, gt=0, description="model.pipeline_model_parallel_size.")
    sequence_parallel: bool = Field(False, description="Only takes effect with tensor_parallel_size > 1.")
    gpu: str | None = Field(None, description="GPU model for the precision check (v100, a100, h100, ...); default:"
                                              " execution.slurm.gpu_type.", examples=["a100"])
    layer_selection: list[int] | None = Field(
        None, description="lora, adapter, ia3: 1-based layers that get adapters; null: every layer.",
        examples=[[1, 2, 3, 4]],
    )
    ptuning_embedding_dim: int = Field(
        1024, gt=0, description="p_tuning.embedding_dim of the prompt encoder (its bottleneck_dim is"
                                " peft.ptuning.encoder_hidden_size)."
    )
    pad_to_max_length: bool = Field(False, description="Pad every batch to max_seq_length, so the worst-case memory"
                                                       " shows at step 1 instead of mid-run.")
    early_stopping: bool = Field(True, description="NeMo's early stopping on val_loss (patience 10 validations).")
    convert: NemoConvertSpec = Field(default_factory=NemoConvertSpec, description="HF -> .nemo conversion job.")
    generation: NemoGenerationSpec = Field(default_factory=NemoGenerationSpec,
                                           description="Generation settings of the evaluate stage.")

    @field_validator("profile", mode="before")
    @classmethod
    def _profile_text(cls, value: object) -> object:
        return _profile_text(value)

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def _profile_text(value: object) -> object:
    """YAML reads ``24.03`` as a float (and ``24.10`` as 24.1): take it back to the tag's text."""
    return f"{value:.2f}" if isinstance(value, float) else value
