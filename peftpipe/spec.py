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
from peftpipe.spec_nemo import NemoSpec

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


class Split(StrictModel):
    """Fractions of a single dataset file held out for validation and test."""

    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of records held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of records held out for test.")


DatasetFormat = Literal["squad", "squad2", "pubmedqa", "jsquad", "jsonl", "json", "csv"]
SQUAD_FORMATS = ("squad", "squad2", "jsquad")
CUSTOM_FORMATS = ("jsonl", "json", "csv")

# Per-format default of `input_template`; JSQuAD gets a Japanese one because its questions are Japanese.
DEFAULT_INPUT_TEMPLATES: dict[str, str] = {
    "squad": "Context: {context}\nQuestion: {question}",
    "squad2": "Context: {context}\nQuestion: {question}",
    "jsquad": "文章：{context}\n質問：{question}",
    # The prompt of NVIDIA's PubMedQA PEFT guide (preprocess_to_jsonl.py), contexts joined by newlines.
    "pubmedqa": "QUESTION: {question}\nCONTEXT: {context}\nTARGET: the answer to the question given the context is "
    "(yes|no|maybe): ",
}
# Placeholders an input_template may use, per format.
TEMPLATE_KEYS: dict[str, set[str]] = {
    "squad": {"context", "question", "title"},
    "squad2": {"context", "question", "title"},
    "jsquad": {"context", "question", "title"},
    "pubmedqa": {"context", "question", "pmid"},
}


def template_fields(template: str) -> list[str]:
    """The ``{name}`` placeholders of a str.format template, in order (raises ValueError if malformed)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


class Squad2Options(StrictModel):
    """How SQuAD v2.0 questions without an answer (``is_impossible: true``) are treated."""

    unanswerable: Literal["skip", "answer"] = Field(
        "skip", description="skip: leave them out and count them in stats.json; answer: keep them with "
        "`unanswerable_answer` as the output."
    )
    unanswerable_answer: str = Field(
        "unanswerable", min_length=1, description="Output text of an unanswerable question when unanswerable: answer."
    )


class JsquadOptions(StrictModel):
    """JSQuAD (JGLUE) joins a page title and its paragraph with `` [SEP] ``, a BERT separator token."""

    sep_replacement: str | None = Field(
        "\n", description="Text that replaces ' [SEP] ' in titles and contexts (a causal LM has no [SEP] token); "
        "null keeps '[SEP]' verbatim."
    )


PubmedqaLabel = Literal["final_decision", "reasoning_required_pred", "reasoning_free_pred"]


class PubmedqaOptions(StrictModel):
    """Which PubMedQA field is the output, and where the test set's ground truth is."""

    label_field: PubmedqaLabel = Field(
        "final_decision", description="final_decision is the expert gold label; the reasoning_*_pred fields are "
        "model predictions shipped with the data (NVIDIA's guide trains on reasoning_required_pred)."
    )
    ground_truth: str | None = Field(
        None, description="test_ground_truth.json (PMID -> label) for a test set without labels; default: "
        "test_ground_truth.json next to the test file, if present.", examples=["pubmedqa/test_ground_truth.json"],
    )


class FieldMapping(StrictModel):
    """How a custom record (JSONL line, JSON array element, CSV row) becomes input and output.

    A value with ``{name}`` placeholders is a template over the record's fields; a plain value
    names one field.
    """

    input: str = Field(description="Template or field name for `input`, e.g. \"{question}\\n{context}\".",
                       examples=["{question}\n{context}"])
    output: str = Field(description="Template or field name for `output`, e.g. answer.", examples=["answer"])
    metadata: list[str] | None = Field(
        None, description="Source fields kept as metadata keys; default: every field the mapping does not use.",
        examples=[["id"]],
    )

    @field_validator("input", "output")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        try:
            fields = template_fields(value)
        except ValueError as error:
            raise ValueError(f"{value!r} is not a valid template ({error}). Fix: write {{field}} placeholders, "
                             "and {{ or }} for literal braces.") from None
        if any(not name for name in fields):
            raise ValueError(f"{value!r} has an empty {{}} placeholder. Fix: name the field, e.g. {{question}}.")
        parts = string.Formatter().parse(value)
        if any(name and (spec or conversion or "." in name or "[" in name) for _, name, spec, conversion in parts):
            raise ValueError(f"{value!r} formats or indexes a field; placeholders here are plain field names. "
                             "Fix: write {field} only.")
        return value

    def used_fields(self, target: str) -> list[str]:
        """Source fields that ``target`` (input or output) reads."""
        value = getattr(self, target)
        fields = template_fields(value)
        return fields if fields else [value]


class DatasetSpec(StrictModel):
    """The data: its format, its files and how a record becomes a prompt."""

    format: DatasetFormat = Field(
        description="squad (SQuAD v1.1), squad2 (SQuAD v2.0), pubmedqa (PubMedQA JSON keyed by PMID), jsquad "
        "(JGLUE JSQuAD), jsonl, json (array of objects) or csv (also TSV)."
    )
    path: str | None = Field(None, description="One file, split by `split` with `train.seed`.",
                              examples=["data/squad-v1.1.json"])
    train: str | None = Field(None, description="Training file (instead of path).", examples=["data/train.jsonl"])
    validation: str | None = Field(None, description="Validation file (with train).",
                                    examples=["data/validation.jsonl"])
    test: str | None = Field(None, description="Test file (with train).", examples=["data/test.jsonl"])
    split: Split = Field(default_factory=Split, description="Held-out fractions when `path` is one file.")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first bad record; skip: leave it out and list it in stats.json."
    )
    input_template: str | None = Field(
        None,
        description="How a SQuAD, JSQuAD or PubMedQA record becomes `input` (keys: context, question, and title or "
        "pmid); default: the format's template.",
        examples=["Context: {context}\nQuestion: {question}"],
    )
    prompt_template: str = Field(
        "{input}\nAnswer: {output}",
        description="NeMo-style prompt over record keys; `{output}` must come last.",
        examples=["### Question\n{input}\n### Answer\n{output}"],
    )
    fields: FieldMapping | None = Field(
        None, description="jsonl, json, csv: how records become input/output; unset: records already have "
        "input and output (NeMo JSONL), checked and passed through."
    )
    delimiter: str | None = Field(
        None, min_length=1, max_length=1, description="csv: the field delimiter; default: tab for .tsv, comma otherwise.",
        examples=[";"],
    )
    squad2: Squad2Options = Field(default_factory=Squad2Options, description="squad2 only.")
    jsquad: JsquadOptions = Field(default_factory=JsquadOptions, description="jsquad only.")
    pubmedqa: PubmedqaOptions = Field(default_factory=PubmedqaOptions, description="pubmedqa only.")
    cache: bool = Field(True, description="Reuse a prepared copy when inputs and options are unchanged.")
    cache_dir: str | None = Field(
        None, description="Prepared datasets, keyed by a fingerprint of inputs and options; default: "
        "<workdir>/data-cache (relative to the working directory).", examples=["/shared/peftpipe-data-cache"],
    )

    @field_validator("prompt_template")
    @classmethod
    def _output_last(cls, template: str) -> str:
        fields = template_fields(template)
        if "output" not in fields or not template.rstrip(" ").endswith("{output}"):
            raise ValueError(
                f"{template!r} must end with the label placeholder {{output}}, as NeMo requires. "
                "Fix: move {output} to the end, e.g. '{input}\\nAnswer: {output}'."
            )
        if fields.count("output") > 1:
            raise ValueError("{output} appears more than once. Fix: use it once, at the end.")
        return template

    @property
    def resolved_input_template(self) -> str:
        """The input template in force: the spec's, else the format's default."""
        return self.input_template or DEFAULT_INPUT_TEMPLATES.get(self.format, "")


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
