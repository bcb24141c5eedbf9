"""The run spec: one YAML file that drives a whole run.

Field-level rules live on the models (types, ranges, the prompt template); rules that
span fields or touch the file system live in :mod:`peftpipe.validation`, which also
turns every failure into ``field: problem. Fix: ...`` text.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StrictModel(BaseModel):
    """Base for every spec section: unknown keys are errors.

    Lax typing is kept on purpose: YAML reads ``1e-4`` as a string, and refusing it would
    punish a spelling every training recipe uses.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSource(StrictModel):
    """Where the base model comes from: a Hub repository or a local directory."""

    repo_id: str | None = Field(None, description="Hugging Face Hub repository, e.g. meta-llama/Llama-3.2-1B.")
    revision: str = Field("main", description="Branch, tag or commit sha; the resolved sha is recorded.")
    path: str | None = Field(None, description="Local directory with config.json and weights (instead of repo_id).")
    endpoint: str | None = Field(
        None, description="Hub endpoint (a mirror); default: HF_ENDPOINT or https://huggingface.co."
    )
    cache_dir: str | None = Field(None, description="Download cache on the cluster file system.")
    token_secret: str | None = Field(
        "hf-token",
        description="Prefect Secret block holding the Hub token (for gated or private repos); if no such"
        " block exists, HF_TOKEN in the worker's environment is used. Never put the token itself in a spec.",
    )


class Split(StrictModel):
    """Fractions of a single dataset file held out for validation and test."""

    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)


DatasetFormat = Literal["squad", "jsonl"]


class DatasetSpec(StrictModel):
    """The data: its format, its files and how a record becomes a prompt."""

    format: DatasetFormat = Field(description="squad (SQuAD v1.1 JSON) or jsonl (NeMo input/output JSONL).")
    path: str | None = Field(None, description="One file, split by `split` with `train.seed`.")
    train: str | None = Field(None, description="Training file (instead of path).")
    validation: str | None = Field(None, description="Validation file (with train).")
    test: str | None = Field(None, description="Test file (with train).")
    split: Split = Field(default_factory=Split)
    input_template: str = Field(
        "Context: {context}\nQuestion: {question}",
        description="How a SQuAD record becomes the `input` field (keys: context, question, title).",
    )
    prompt_template: str = Field(
        "{input}\nAnswer: {output}",
        description="NeMo-style prompt over record keys; `{output}` must come last.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _output_last(cls, template: str) -> str:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        if "output" not in fields or not template.rstrip(" ").endswith("{output}"):
            raise ValueError(
                f"{template!r} must end with the label placeholder {{output}}, as NeMo requires. "
                "Fix: move {output} to the end, e.g. '{input}\\nAnswer: {output}'."
            )
        if fields.count("output") > 1:
            raise ValueError("{output} appears more than once. Fix: use it once, at the end.")
        return template


class LoraSpec(StrictModel):
    r: int = Field(8, gt=0, description="Rank of the update matrices.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names to adapt; always explicit so nothing trains QKV-only by surprise.",
    )


class Ia3Spec(StrictModel):
    target_modules: list[str] = Field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"], min_length=1)
    feedforward_modules: list[str] = Field(
        default_factory=lambda: ["down_proj"], description="Subset of target_modules scaled on their input."
    )


class PtuningSpec(StrictModel):
    num_virtual_tokens: int = Field(10, gt=0)
    encoder_hidden_size: int = Field(128, gt=0, description="Hidden size of the prompt encoder MLP.")


PeftMethod = Literal["lora", "ia3", "ptuning", "adapter"]


class PeftSpec(StrictModel):
    """The parameter-efficient method; only the block of the chosen method is used."""

    method: PeftMethod = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    ia3: Ia3Spec = Field(default_factory=Ia3Spec)
    ptuning: PtuningSpec = Field(default_factory=PtuningSpec)


class TrainSpec(StrictModel):
    """Optimisation settings; micro_batch_size may change between attempts, the rest may not."""

    global_batch_size: int = Field(8, gt=0)
    micro_batch_size: int = Field(4, gt=0)
    max_steps: int = Field(100, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    max_seq_length: int = Field(512, gt=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 elsewhere."
    )
    seed: int = 1234
    checkpoint_every: int = Field(50, gt=0, description="Save a resumable checkpoint every N optimizer steps.")
    devices: int = Field(1, gt=0, description="GPUs (or processes) per node; data-parallel ranks.")
    num_nodes: int = Field(1, gt=0)
    activation_checkpointing: bool = False
    max_attempts: int = Field(4, gt=0, description="Attempts of the fine-tune stage, retries on failure included.")

    @property
    def data_parallel_size(self) -> int:
        return self.devices * self.num_nodes


class ExecutionSpec(StrictModel):
    backend: Literal["local"] = Field("local", description="Where stages run: local subprocesses.")


class EvaluationSpec(StrictModel):
    metrics: list[Literal["exact_match", "exact_match_normalized", "f1", "loss"]] = Field(
        default_factory=lambda: ["exact_match", "exact_match_normalized", "f1", "loss"], min_length=1
    )
    tokens_to_generate: int = Field(32, gt=0)
    greedy: bool = True
    batch_size: int = Field(8, gt=0)
    max_records: int | None = Field(None, gt=0, description="Evaluate only the first N test records.")


# Bucket names as S3 accepts them (3-63 lowercase letters, digits, dots, dashes).
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3StoreSpec(StrictModel):
    """How to reach an ``s3://`` store; credentials never go here, only the name of the block holding them."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint, e.g. http://127.0.0.1:8333; default: the block's, else AWS."
    )
    region: str | None = Field(None, description="Region name; default: the block's or the AWS environment's.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="path for most S3-compatible servers (bucket in the path, not the host name)."
    )
    part_size_mb: int = Field(
        64, ge=5, le=5120, description="Multipart part size; files above it are sent in parts (S3 minimum 5)."
    )
    max_concurrency: int = Field(8, gt=0, le=64, description="Parts sent or fetched in parallel per file.")
    max_attempts: int = Field(
        10, gt=0, le=30, description="Attempts per request on connection errors, throttling and 5xx (backoff)."
    )
    credentials_block: str | None = Field(
        None,
        description="prefect-aws block with the credentials: NAME (an AwsCredentials block) or"
        " SLUG/NAME (aws-credentials, minio-credentials or s3-bucket); default: the AWS environment.",
    )


class ArtifactsSpec(StrictModel):
    store: str = Field(
        "file://runs/artifacts",
        description="file://DIR (relative to the working directory) or s3://BUCKET/PREFIX.",
    )
    s3: S3StoreSpec = Field(default_factory=S3StoreSpec, description="Settings of an s3:// store.")

    @field_validator("store")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url.startswith("file://"):
            return url
        if not url.startswith("s3://"):
            raise ValueError(f"{url!r} has an unsupported scheme. Fix: use file://DIRECTORY or s3://BUCKET/PREFIX.")
        bucket = url[len("s3://"):].split("/", 1)[0]
        if not S3_BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(
                f"{bucket!r} is not a valid S3 bucket name. Fix: use 3-63 lowercase letters, digits, dots and dashes."
            )
        return url


RUN_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class RunSpec(StrictModel):
    """Everything one fine-tuning run needs, validated before anything starts."""

    name: str = Field(description="Human name of the run; run ids start with it.")
    model: ModelSource
    dataset: DatasetSpec
    peft: PeftSpec = Field(default_factory=PeftSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    engine: Literal["hf"] = "hf"
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    artifacts: ArtifactsSpec = Field(default_factory=ArtifactsSpec)
    workdir: str = Field("runs", description="Where run directories are created (relative to the working directory).")

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, name: str) -> str:
        if not RUN_ID_PATTERN.match(name):
            raise ValueError(
                f"{name!r} is not a valid run name. Fix: use lowercase letters, digits and dashes (max 63)."
            )
        return name


class LoadedSpec(BaseModel):
    """A parsed spec together with the directory its relative input paths are resolved against."""

    model_config = ConfigDict(frozen=True)

    spec: RunSpec
    base_dir: Path

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()
