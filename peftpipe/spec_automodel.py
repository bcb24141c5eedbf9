"""The run spec's ``automodel:`` section, read only when ``engine: automodel``.

NeMo AutoModel (PyPI ``nemo-automodel``) runs in an environment of its own: a venv (its pins,
transformers 5.18 exactly and triton 3.8, would otherwise bind the pipeline's) or the job's
container (``execution.slurm.container``). Everything AutoModel's YAML needs that the run spec
already says (LoRA, batch sizes, steps, learning rate, sequence length, precision, seed,
checkpoint interval) comes from the spec's own sections; this one holds only what is AutoModel's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from peftpipe.spec_base import StrictModel

AUTOMODEL_VERSION = "0.7.0"
SUPPORTED_VERSIONS = ("0.7.0",)


class AutomodelSpec(StrictModel):
    """Which AutoModel, where it is installed, and how it shards the model."""

    version: Literal["0.7.0"] = Field(
        AUTOMODEL_VERSION, description="The nemo-automodel release the YAML is rendered for; the environment must"
                                       " hold exactly this version (checked before anything runs)."
    )
    venv: str | None = Field(
        None, description="A venv with nemo-automodel installed (scripts/setup_automodel.sh makes one); relative to"
                          " the spec file. Not used when execution.slurm.container runs a container image (its"
                          " `python` is AutoModel's then).", examples=[".venv-automodel"],
    )
    device: Literal["cuda", "cpu"] = Field(
        "cuda", description="What the ranks compute on: cuda (GPUs, NCCL; precision auto is bf16) or cpu (gloo;"
                            " precision auto is fp32), e.g. a test or a laptop. On a machine without CUDA the engine"
                            " starts AutoModel through peftpipe's CPU launcher (launcher.py)."
    )
    strategy: Literal["ddp", "fsdp2"] = Field(
        "fsdp2", description="distributed.strategy: fsdp2 shards parameters, gradients and optimizer state over"
                             " the data-parallel ranks; ddp replicates the model on every rank."
    )
    tensor_parallel_size: int = Field(
        1, gt=0, description="distributed.tp_size (fsdp2 only): GPUs that split each layer; data-parallel size is"
                             " the GPU count / this."
    )
    rms_norm: Literal["torch", "torch_fp32", "te"] | None = Field(
        None, description="model.backend.rms_norm; null keeps AutoModel's default (torch_fp32, a torch.compile'd"
                          " kernel whose first step compiles for ~15 s on CPU; `torch` skips that)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted AutoModel config keys set last, e.g. {optimizer.betas: [0.9,"
                                          " 0.95]}, for what the run spec does not express. A key AutoModel does"
                                          " not know fails the job at start-up (diagnosed config_error)."
    )

    @field_validator("overrides")
    @classmethod
    def _dotted_keys(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        for key in overrides:
            if not key or any(not part.isidentifier() for part in key.split(".")):
                raise ValueError(f"{key!r} is not a dotted config key. Fix: write it like optimizer.betas")
        return overrides
