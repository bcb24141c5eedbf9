"""The run spec: one YAML file that drives a whole run.

Field-level rules live on the models (types, ranges, the prompt template); rules that
span fields or touch the file system live in :mod:`peftpipe.validation`, which also
turns every failure into ``field: problem. Fix: ...`` text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from peftpipe.engine_registry import ENGINES
from peftpipe.safe_names import SPEC_NAME_PATTERN, repo_id_problem, revision_problem
from peftpipe.spec_base import StrictModel
from peftpipe.spec_execution import (  # noqa: F401 - re-exported: spec.py is where callers look
    ContainerSpec,
    ExecutionSpec,
    SlurmSpec,
    memory_mb,
    memory_text,
    time_limit_s,
)
from peftpipe.spec_automodel import AutomodelSpec
from peftpipe.spec_dataset import (  # noqa: F401 - re-exported: spec.py is where callers look
    CUSTOM_FORMATS,
    DEFAULT_INPUT_TEMPLATES,
    SQUAD_FORMATS,
    TEMPLATE_KEYS,
    DatasetFormat,
    DatasetSpec,
    FieldMapping,
    JsquadOptions,
    PubmedqaLabel,
    PubmedqaOptions,
    Split,
    Squad2Options,
    template_fields,
)
from peftpipe.spec_nemo import NemoSpec
from peftpipe.spec_peft import (  # noqa: F401 - re-exported
    AdapterSpec,
    Ia3Spec,
    LoraSpec,
    PeftMethod,
    PeftSpec,
    PtuningSpec,
    TargetModules,
)

# The registered engines' names (peftpipe/engine_registry.py): a new engine needs no edit here.
EngineName = Literal[tuple(ENGINES)]  # type: ignore[valid-type]


class ModelSource(StrictModel):
    """Where the base model comes from: a Hub repository or a local directory."""

    repo_id: str | None = Field(None, description="Hugging Face Hub repository, e.g. meta-llama/Llama-3.2-1B.",
                                  examples=["Qwen/Qwen2.5-0.5B"])
    revision: str = Field("main", description="Branch, tag or commit sha; the resolved sha is recorded.",
                          examples=["v1.0"])
    path: str | None = Field(None, description="Local directory with config.json and weights (instead of repo_id);"
                              " relative to the spec file.", examples=["/scratch/models/Llama-3.2-1B"])
    endpoint: str | None = Field(
        None, description="Hub endpoint (a mirror); default: HF_ENDPOINT or https://huggingface.co.",
        examples=["https://hf-mirror.example.org"],
    )
    cache_dir: str | None = Field(None, description="Download cache on the cluster file system; default: the"
                                   " Hugging Face cache (HF_HOME).", examples=["/shared/hf-cache"])
    timeout_s: float = Field(60.0, gt=0, description="Longest wait for any answer from the Hub (metadata"
                                                     " call, tree listing, each read of a download).",
                             examples=[120])
    token_secret: str | None = Field(
        "hf-token",
        description="Prefect Secret block holding the Hub token (for gated or private repos); if no such"
        " block exists, HF_TOKEN in the worker's environment is used. Never put the token itself in a spec.",
        examples=["hf-token-lab"],
    )

    @field_validator("repo_id")
    @classmethod
    def _hub_repo_id(cls, repo_id: str | None) -> str | None:
        problem = repo_id_problem(repo_id) if repo_id is not None else None
        if problem:
            raise ValueError(f"{repo_id!r} is not a Hub repository id: {problem}. Fix: write it as namespace/name,"
                             " e.g. meta-llama/Llama-3.2-1B")
        return repo_id

    @field_validator("revision")
    @classmethod
    def _hub_revision(cls, revision: str) -> str:
        problem = revision_problem(revision)
        if problem:
            raise ValueError(f"{revision!r} is not a branch, tag or commit sha: it {problem}. Fix: use a name the"
                             " repository has, e.g. main or a 40-character commit sha")
        return revision


RungSetting = Literal["auto"] | bool


class MemorySpec(StrictModel):
    """The memory ladder's rungs (peftpipe/memory_ladder.py): true pins a rung on from the first attempt, false
    forbids it, auto lets the preflight and OOM retries turn it on, cheapest first."""

    checkpointing: RungSetting = Field("auto", description="Activation checkpointing: keep each layer's input and"
                                       " recompute the layer in backward (about a third more compute).",
                                       examples=[True])
    offload: RungSetting = Field("auto", description="Offload the checkpointed layer inputs to pinned host memory"
                                 " during the forward pass (hf engine; needs checkpointing).", examples=[False])
    shard: RungSetting = Field("auto", description="Shard the parameters over the node's GPUs (FSDP2; needs"
                               " train.devices > 1; hf engine).", examples=[False])
    quantize_base: RungSetting = Field("auto", description="Store the frozen base weights in 4 bits (QLoRA: NF4 with"
                                       " bitsandbytes, compute and adapters in the run's precision; hf engine, one"
                                       " rank or several without shard). The adapter loads on the 16-bit base.",
                                       examples=[False])


class TrainSpec(StrictModel):
    """Optimisation settings; micro_batch_size may change between attempts, the rest may not."""

    global_batch_size: int = Field(8, gt=0, description="Records per optimizer step over all ranks; kept by OOM"
                                                       " retries.", examples=[32])
    micro_batch_size: int = Field(4, gt=0, description="Records per forward pass per rank; global_batch_size must be"
                                                      " a multiple of it x data-parallel ranks (gradient"
                                                      " accumulation covers the rest). Lowered on GPU OOM.",
                                  examples=[2])
    max_steps: int = Field(100, gt=0, description="Optimizer steps to train.", examples=[1000])
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW.", examples=[3e-4])
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.", examples=[0.01])
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up from 0 to learning_rate.",
                              examples=[50])
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="Learning rate after warm-up: constant, linear decay to 0, or cosine decay to 0."
    )
    max_seq_length: int = Field(512, gt=0, description="Tokens per row; longer records are truncated (see"
                                                       " `peftpipe data stats`).", examples=[2048])
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 elsewhere."
    )
    seed: int = Field(1234, description="Seed of the dataset split, data order and adapter initialisation.",
                      examples=[42])
    checkpoint_every: int = Field(50, gt=0, description="Save a resumable checkpoint every N optimizer steps.")
    devices: int = Field(1, gt=0, description="GPUs (or processes) per node; data-parallel ranks.")
    num_nodes: int = Field(1, gt=0, description="Nodes of a Slurm job; data-parallel ranks = devices x num_nodes.")
    activation_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less"
                                                              " memory, about a third more compute.")
    memory: Literal["auto"] | MemorySpec = Field(
        "auto", description="The memory ladder: auto lets the preflight and OOM retries walk every rung the engine"
        " offers (lower micro batch, then checkpointing, offload, shard, 4-bit base); a mapping pins (true) or forbids"
        " (false) single rungs.", examples=[{"checkpointing": True, "offload": "auto", "quantize_base": False}])
    preflight: bool = Field(True, description="Before the first attempt, lower micro_batch_size to the largest"
                                              " divisor predicted to fit in GPU memory (micro_batch_size is an"
                                              " upper bound).")
    packing: bool = Field(
        True, description="Pack several records into each max_seq_length row (no attention across records) instead "
        "of padding each micro batch to its longest record. Ignored for p-tuning, whose virtual tokens lead every row.",
    )
    max_attempts: int = Field(4, gt=0, description="Attempts of the fine-tune stage, retries on failure included.")
    loggers: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="Experiment loggers fed from the per-step metrics while training runs "
        "(off by default; `pip install 'peftpipe[loggers]'`): tensorboard writes event files to "
        "finetune/tensorboard/, mlflow one run named after the run id, in MLFLOW_TRACKING_URI if the flow's "
        "environment sets it, else in finetune/mlflow.db; both are published with the run.",
        examples=[["tensorboard", "mlflow"]])

    @property
    def data_parallel_size(self) -> int:
        return self.devices * self.num_nodes


MetricName = Literal["exact_match", "exact_match_normalized", "f1", "loss", "accuracy", "macro_f1"]


class EvaluationSpec(StrictModel):
    """Generation on the test split and its scores."""

    metrics: list[MetricName] = Field(
        default_factory=lambda: ["exact_match", "exact_match_normalized", "f1", "loss", "accuracy", "macro_f1"],
        min_length=1, description="accuracy and macro_f1 are computed for label tasks only (see labels).",
        examples=[["exact_match_normalized", "f1"]])
    labels: list[str] | None = Field(
        None, description="The closed answer set of a label task (e.g. [yes, no, maybe]); unset: detected when "
        "the test answers are a few one-word labels, and [yes, no, maybe] for pubmedqa.",
        examples=[["yes", "no", "maybe"]])
    tokens_to_generate: int = Field(32, gt=0, description="Maximum new tokens generated per test record.",
                                    examples=[64])
    greedy: bool = Field(True, description="Greedy decoding; false samples (nemo: see nemo.generation).")
    batch_size: int = Field(8, gt=0, description="Test records generated at once.", examples=[16])
    max_records: int | None = Field(None, gt=0, description="Evaluate only the first N test records.",
                                    examples=[500])
    select_metric: MetricName = Field(
        "f1", description="What a re-tune compares to decide on promotion (loss: lower is better).")
    baseline: bool | None = Field(
        None, description="Also score the base model without the adapter on the same test records and report "
        "base vs adapter; unset: on for the first run of a spec and for every re-tune.", examples=[False])
    test_overlap: Literal["error", "warn"] = Field(
        "error", description="When a re-tune's test records were training records of the new or the promoted "
        "adapter (by content fingerprint): error refuses the comparison, warn reports it and compares anyway.")


# Bucket names as S3 accepts them (3-63 lowercase letters, digits, dots, dashes).
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3StoreSpec(StrictModel):
    """How to reach an ``s3://`` store; credentials never go here, only the name of the block holding them."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint, e.g. http://127.0.0.1:8333; default: the block's, else AWS.",
        examples=["http://127.0.0.1:8333"],
    )
    region: str | None = Field(None, description="Region name; default: the block's or the AWS environment's.",
                               examples=["us-east-1"])
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
        examples=["seaweed"],
    )


class ArtifactsSpec(StrictModel):
    """Where a run's outputs are stored, each with its sha256 in the run's manifest."""

    store: str = Field(
        "file://runs/artifacts",
        description="file://DIR (relative to the working directory) or s3://BUCKET/PREFIX.",
        examples=["s3://peftpipe/runs"],
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


class RunSpec(StrictModel):
    """Everything one fine-tuning run needs, validated before anything starts."""

    name: str = Field(description="Human name of the run; run ids start with it.", examples=["llama-squad-lora"])
    model: ModelSource = Field(description="The base model (repo_id or path).")
    dataset: DatasetSpec = Field(description="The data and how records become prompts.")
    peft: PeftSpec = Field(default_factory=PeftSpec, description="The parameter-efficient method.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Optimisation, batch sizes and attempts.")
    engine: EngineName = Field(
        "hf", description="hf: transformers + peft; automodel: NVIDIA NeMo AutoModel's fine-tuning recipe in its own"
                          " venv or container (see the automodel section); nemo: the legacy NeMo 1.x scripts in a"
                          " 24.03-24.09 container (see the nemo section).")
    nemo: NemoSpec = Field(default_factory=NemoSpec, description="engine nemo only.")
    automodel: AutomodelSpec = Field(default_factory=AutomodelSpec, description="engine automodel only.")
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec, description="Local processes or Slurm jobs.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Test-set generation and scores.")
    artifacts: ArtifactsSpec = Field(default_factory=ArtifactsSpec, description="The artifact store.")
    workdir: str = Field("runs", description="Where run directories are created (relative to the working directory).",
                         examples=["/scratch/peftpipe-runs"])

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, name: str) -> str:
        if not SPEC_NAME_PATTERN.match(name):
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
        return resolve_relative(self.base_dir, relative)


def resolve_relative(base_dir: Path, relative: str) -> Path:
    """``relative`` against ``base_dir`` (the spec's directory); absolute paths stay as they are."""
    path = Path(relative).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()
