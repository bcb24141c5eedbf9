"""Checks of an ``engine: nemo`` spec before anything is submitted.

Each rule is one NeMo, Megatron or container behaviour that would otherwise fail minutes into a
job (an AssertionError, an argparse error, ``exit(1)``) or, worse, run with a silent change
(emulated bf16 on V100, fp16 from a CPU conversion, LoRA on QKV only).
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

import yaml

from peftpipe.engines.nemo import convert
from peftpipe.spec_issues import SpecError, SpecIssue
from peftpipe.engines.nemo.finetune import lora_target_modules
from peftpipe.engines.nemo.overrides import hydra_string
from peftpipe.engines.nemo.profiles import PROFILES, Profile
from peftpipe.engines.nemo.resources import (compute_capability, convert_precision, data_parallel_size,
                                             generate_layout, gpu_name, trainer_precision, world_size)
from peftpipe.spec import LoadedSpec, RunSpec, memory_mb, template_fields


# The NeMo Framework release in an image name: nvcr.io#nvidia/nemo:24.07, nemo-25.02.sif, nemo_24.09.sif.
CONTAINER_RELEASE = re.compile(r"nemo[:_-](\d{2})\.(\d{2})")
LAST_LEGACY_RELEASE = (24, 9)


def check_container_release(spec: RunSpec) -> list[SpecIssue]:
    """A NeMo Framework container after 24.09 runs no script the (legacy) nemo engine renders."""
    image = spec.execution.slurm.container.image or ""
    match = CONTAINER_RELEASE.search(image.rsplit("/", 1)[-1])
    if match is None or (int(match.group(1)), int(match.group(2))) <= LAST_LEGACY_RELEASE:
        return []
    return [SpecIssue("execution.slurm.container.image", f"{image} is NeMo Framework {match.group(1)}."
                      f"{match.group(2)}; the nemo engine renders NeMo 1.x scripts (megatron_gpt_finetuning.py and"
                      " the HF converters), which the containers after 24.09 no longer run: NeMo 2.x moved to"
                      " NeMo-Run, the 1.x model classes left nemo_toolkit after 2.5.0 and its NLP collection in 2.6",
                      "fine-tune with engine: automodel (NVIDIA NeMo AutoModel, the current NeMo fine-tuning; see"
                      " the automodel section), or name a 24.03-24.09 container")]


def check_nemo(loaded: LoadedSpec) -> list[SpecIssue]:
    spec = loaded.spec
    nemo = spec.nemo
    issues: list[SpecIssue] = []
    if spec.execution.backend != "slurm":
        issues.append(SpecIssue("execution.backend", "the nemo engine runs NeMo's scripts in Slurm jobs, inside"
                                " execution.slurm.container (or a cluster venv), never in this process",
                                "set execution.backend: slurm"))
    issues += check_container_release(spec)
    if nemo.profile is None:
        return issues + [SpecIssue("nemo.profile", "is required with engine nemo: it says which NeMo container"
                                   " execution.slurm.container.image holds", f"set one of {', '.join(PROFILES)}")]
    profile = PROFILES[nemo.profile]
    if spec.peft.method not in profile.peft_schemes:
        issues.append(SpecIssue("peft.method", f"{spec.peft.method!r} is not a PEFT scheme of container"
                                f" {profile.name}", f"choose one of {', '.join(profile.peft_schemes)}"))
    issues += _check_precision(spec)
    issues += _check_parallel(spec)
    issues += _check_template(spec)
    issues += _check_training(spec)
    hf_config = _hf_config(loaded)
    shape = _model_shape(loaded, hf_config)
    if shape is not None:
        issues += _check_shape(spec, shape)
    if nemo.nemo_path is not None:
        path = loaded.resolve(nemo.nemo_path)
        if not path.exists():
            issues.append(SpecIssue("nemo.nemo_path", f"{path} does not exist",
                                    "point it at a converted .nemo, or remove it to convert the model"))
    elif hf_config is not None:
        issues += _check_conversion(loaded, profile, hf_config)
    return issues


def _check_precision(spec: RunSpec) -> list[SpecIssue]:
    precision = trainer_precision(spec)
    if precision is None:
        return [SpecIssue("train.precision", "auto cannot choose between bf16 and 16 for NeMo (whose own default is"
                          f" fp16) without knowing the GPU; {gpu_name(spec)!r} is not a known GPU model",
                          "set execution.slurm.gpu_type or nemo.gpu to the GPU model (e.g. v100, a100, h100), or"
                          " set train.precision")]
    capability = compute_capability(gpu_name(spec))
    if precision == "bf16" and capability is not None and capability < 8.0:
        return [SpecIssue("train.precision", f"bf16 on {gpu_name(spec)} (compute capability {capability}) is"
                          " emulated, and NeMo does not stop you: it trains slowly or fails in fused kernels",
                          "set train.precision: fp16 (NeMo trainer.precision=16, with loss scaling)")]
    return []


def _check_parallel(spec: RunSpec) -> list[SpecIssue]:
    nemo, train = spec.nemo, spec.train
    issues: list[SpecIssue] = []
    world = world_size(spec)
    if world % nemo.model_parallel_size:
        issues.append(SpecIssue("nemo.tensor_parallel_size", f"TP {nemo.tensor_parallel_size} x PP"
                                f" {nemo.pipeline_parallel_size} = {nemo.model_parallel_size} does not divide the"
                                f" {world} GPUs (train.devices x train.num_nodes)",
                                "make TP x PP a divisor of the GPU count"))
        return issues
    data_parallel = data_parallel_size(spec)
    per_step = train.micro_batch_size * data_parallel
    if train.global_batch_size % per_step:
        # Megatron's microbatch calculator asserts this for training and again for validation.
        issues.append(SpecIssue("train.global_batch_size", f"{train.global_batch_size} is not divisible by"
                                f" micro_batch_size {train.micro_batch_size} x data-parallel {data_parallel}"
                                f" ({world} GPUs / TP x PP {nemo.model_parallel_size}), for train_ds and"
                                " validation_ds alike", f"use a multiple of {per_step}"))
    layout = generate_layout(spec)
    if layout.nodes > 1 and nemo.model_parallel_size % train.devices:
        issues.append(SpecIssue("nemo.tensor_parallel_size", f"generation needs exactly TP x PP ="
                                f" {nemo.model_parallel_size} GPUs, which is no whole number of nodes of"
                                f" {train.devices}", "make TP x PP a multiple of train.devices"))
    return issues


def _check_template(spec: RunSpec) -> list[SpecIssue]:
    template = spec.dataset.prompt_template
    issues: list[SpecIssue] = []
    if not template.endswith("{output}"):
        issues.append(SpecIssue("dataset.prompt_template", "NeMo asserts that the label placeholder {output} is the"
                                " template's very last text (no trailing spaces)", "end the template with {output}"))
    if "input" not in template_fields(template):
        issues.append(SpecIssue("dataset.prompt_template", "has no {input}, NeMo's truncation field (it asserts"
                                " truncation fields are template keys)", "put {input} in the template"))
    try:
        hydra_string(template)
    except ValueError:
        issues.append(SpecIssue("dataset.prompt_template", "contains '${', which Hydra reads as an interpolation",
                                "remove the '$' before '{'"))
    return issues


def _check_training(spec: RunSpec) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    if spec.train.lr_schedule != "cosine":
        issues.append(SpecIssue("train.lr_schedule", f"{spec.train.lr_schedule} is not rendered for NeMo, whose"
                                " fine-tuning config schedules with CosineAnnealing", "set train.lr_schedule: cosine"))
    issues += _check_lora_targets(spec)  # NeMo's fused module names; no model needed
    if spec.peft.method == "ia3" and spec.peft.ia3.model_fields_set:
        issues.append(SpecIssue("peft.ia3", "NeMo's IA3 scales keys, values and the MLP input at fixed places;"
                                " target_modules and feedforward_modules cannot be chosen",
                                "remove peft.ia3 and use nemo.layer_selection to choose layers"))
    if spec.evaluation.max_records is not None:
        issues.append(SpecIssue("evaluation.max_records", "megatron_gpt_generate.py always generates for the whole"
                                " test file", "remove it (or use a smaller dataset.split.test)"))
    return issues


def _check_lora_targets(spec: RunSpec) -> list[SpecIssue]:
    """LoRA target names NeMo can adapt: its fused modules, or HF names that map onto them in whole groups."""
    if spec.peft.method != "lora":
        return []
    try:
        lora_target_modules(spec.peft.lora.target_modules)
    except SpecError as error:
        return list(error.issues)
    return []


def _hf_config(loaded: LoadedSpec) -> dict[str, Any] | None:
    """The model's config.json when it is on disk: a model directory or a Hub model already in the cache."""
    from peftpipe.model_fit import local_config

    return local_config(loaded)


def nemo_model_config(path: Path) -> dict[str, Any] | None:
    """``model_config.yaml`` of a .nemo tar (or an extracted .nemo directory), without loading weights."""
    if path.is_dir():
        config = path / "model_config.yaml"
        return yaml.safe_load(config.read_text()) if config.is_file() else None
    if not tarfile.is_tarfile(path):
        return None
    with tarfile.open(path) as archive:
        for member in archive:
            if Path(member.name).name == "model_config.yaml":
                handle = archive.extractfile(member)
                return yaml.safe_load(handle.read()) if handle else None
    return None


def _model_shape(loaded: LoadedSpec, hf_config: dict[str, Any] | None) -> tuple[int, int, int] | None:
    """(attention heads, key/value heads, layers) from the .nemo or the HF config, when readable."""
    nemo_path = loaded.spec.nemo.nemo_path
    if nemo_path is not None:
        path = loaded.resolve(nemo_path)
        config = nemo_model_config(path) if path.exists() else None
        if not config:
            return None
        heads = int(config["num_attention_heads"])
        return heads, int(config.get("num_query_groups") or heads), int(config["num_layers"])
    if hf_config is None:
        return None
    shape = convert.model_shape(hf_config)
    return shape.heads, shape.kv_heads, shape.layers


def _check_shape(spec: RunSpec, shape: tuple[int, int, int]) -> list[SpecIssue]:
    heads, kv_heads, layers = shape
    tp, pp = spec.nemo.tensor_parallel_size, spec.nemo.pipeline_parallel_size
    issues: list[SpecIssue] = []
    for count, what in ((heads, "attention heads"), (kv_heads, "key/value heads (query groups)")):
        if count % tp:
            divisors = [d for d in range(1, count + 1) if count % d == 0 and d <= 16]
            issues.append(SpecIssue("nemo.tensor_parallel_size", f"{tp} does not divide the model's {count} {what};"
                                    " Megatron splits them across tensor-parallel ranks",
                                    f"use one of {', '.join(map(str, divisors))}"))
            break
    if layers % pp:
        issues.append(SpecIssue("nemo.pipeline_parallel_size", f"{pp} does not divide the model's {layers} layers",
                                "use a divisor of the layer count"))
    selection = spec.nemo.layer_selection or []
    outside = [layer for layer in selection if not 1 <= layer <= layers]
    if outside:
        issues.append(SpecIssue("nemo.layer_selection", f"{outside} are not layers of this {layers}-layer model",
                                f"use numbers from 1 to {layers}"))
    return issues


def _check_conversion(loaded: LoadedSpec, profile: Profile, hf_config: dict[str, Any]) -> list[SpecIssue]:
    spec = loaded.spec
    try:
        converter = convert.choose_converter(hf_config, profile)
    except SpecError as error:
        return list(error.issues)
    issues: list[SpecIssue] = []
    precision = convert_precision(spec)
    if precision is not None and precision not in converter.precisions:
        issues.append(SpecIssue("nemo.convert.precision", f"{precision} is not accepted by container {profile.name}'s"
                                f" {converter.name} converter (--precision {' or '.join(converter.precisions)})",
                                f"set nemo.convert.precision to {' or '.join(converter.precisions)}"))
    if converter.needs_cuda and spec.nemo.convert.gpus == 0:
        issues.append(SpecIssue("nemo.convert.gpus", f"the {converter.name} converter of container {profile.name}"
                                " checks HF against NeMo logits on CUDA before saving", "set nemo.convert.gpus: 1"))
    if converter.name == "llama":
        rope = (hf_config.get("rope_scaling") or {})
        rope_type = rope.get("rope_type") or rope.get("type")
        if rope_type is not None and rope_type not in profile.llama_rope_types:
            issues.append(SpecIssue("nemo.profile", f"container {profile.name}'s llama converter accepts rope_scaling"
                                    f" {' or '.join(profile.llama_rope_types)}, not {rope_type!r} (Llama 3.1)",
                                    "use profile 24.09 with its image"))
        # Llama 1/2 have a 32000-token sentencepiece vocabulary; Llama 3's 128256-token one has no
        # tokenizer.model, which the 24.03 converter's LlamaTokenizer needs.
        if int(hf_config.get("vocab_size", 0)) >= 100_000 and not profile.llama_auto_tokenizer:
            issues.append(SpecIssue("nemo.profile", f"container {profile.name}'s llama converter only reads"
                                    " sentencepiece tokenizers (tokenizer.model); this looks like Llama 3",
                                    "use profile 24.05 or later with its image"))
    if converter.name == "mistral_7b" and profile.mistral_needs_sliding_window and not hf_config.get("sliding_window"):
        issues.append(SpecIssue("nemo.profile", f"container {profile.name}'s mistral converter copies sliding_window"
                                " into encoder_seq_length, and this config has none",
                                "use profile 24.09 with its image"))
    needed = spec.nemo.convert.mem or f"{convert.host_memory_gib(hf_config)}G"
    limit = spec.execution.slurm.max_mem
    if limit is not None and memory_mb(needed) > memory_mb(limit):
        issues.append(SpecIssue("nemo.convert.mem", f"conversion needs about {needed} of host memory (an fp32 load"
                                f" of {convert.parameter_count(hf_config) / 1e9:.1f}B parameters), above"
                                f" execution.slurm.max_mem {limit}", "convert on a node with more memory and set"
                                " nemo.nemo_path to the result"))
    return issues
