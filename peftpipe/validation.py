"""Load a run spec and check it completely before anything is started.

Every problem becomes a :class:`SpecIssue` that names the field, says what is wrong and
how to fix it; all problems of a spec are reported at once.
"""

from __future__ import annotations

import difflib
import string
from functools import partial
from pathlib import Path
from collections.abc import Callable
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from peftpipe.memory_ladder import RUNGS
from peftpipe.engines import engine_for
from peftpipe.experiment_loggers import INSTALL_HINT, missing_packages
from peftpipe.spec_issues import SpecError, SpecIssue
from peftpipe.spec import (
    CUSTOM_FORMATS,
    TEMPLATE_KEYS,
    DatasetSpec,
    LoadedSpec,
    RunSpec,
    memory_mb,
    resolve_relative,
    template_fields,
    time_limit_s,
)

def load_spec(path: str | Path, overrides: dict[str, Any] | None = None,
              defaults: dict[str, Any] | None = None) -> LoadedSpec:
    """Parse and fully check the spec at ``path``; raise :class:`SpecError` if it must not run.

    ``overrides`` maps dotted keys (``train.micro_batch_size``) to values applied before parsing;
    ``defaults`` is a nested mapping (a cluster block's settings) under what the file says.
    """
    spec_path = Path(path)
    if not spec_path.is_file():
        problem = "is a directory" if spec_path.is_dir() else "does not exist"
        raise SpecError([SpecIssue("spec", f"{spec_path} {problem}", "pass the path of a run spec YAML file")])
    try:
        raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise SpecError([SpecIssue("spec", f"{spec_path} is not valid YAML{where} ({problem})",
                                   "correct the YAML syntax")]) from None
    except (UnicodeDecodeError, RecursionError) as error:
        problem = "nested too deeply" if isinstance(error, RecursionError) else f"not UTF-8 ({error.reason})"
        raise SpecError([SpecIssue("spec", f"{spec_path} cannot be read: {problem}",
                                   "save the spec as UTF-8 YAML of ordinary depth")]) from None
    if not isinstance(raw, dict):
        raise SpecError([SpecIssue("spec", f"{spec_path} holds no mapping", "write the spec as `key: value` pairs")])
    raw = _merged_under(defaults or {}, raw)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError([_issue_from_pydantic(item) for item in error.errors()]) from None
    loaded = LoadedSpec(spec=spec, base_dir=spec_path.resolve().parent)
    issues = check_spec(loaded)
    if issues:
        raise SpecError(issues)
    return loaded


def _merged_under(defaults: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """``explicit`` with ``defaults`` filling only the keys it does not set (recursively)."""
    merged = dict(defaults)
    for key, value in explicit.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged_under(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError([SpecIssue(dotted, f"cannot override inside {key!r}", "override a mapping's key")])
    node[leaf] = value


def check_spec(loaded: LoadedSpec) -> list[SpecIssue]:
    """Checks that span several fields or look at the file system."""
    spec = loaded.spec
    issues: list[SpecIssue] = []
    train = spec.train
    engine = engine_for(spec.engine)
    if train.warmup_steps >= train.max_steps:
        issues.append(
            SpecIssue(
                "train.warmup_steps",
                f"{train.warmup_steps} is not below max_steps {train.max_steps}",
                "use fewer warm-up steps than training steps",
            )
        )
    supported = engine.methods
    if spec.peft.method not in supported:
        issues.append(
            SpecIssue(
                "peft.method",
                f"{spec.peft.method!r} is not supported by engine {spec.engine!r} (it supports {', '.join(supported)});"
                f" {spec.peft.method!r} is a NeMo scheme, run by the nemo engine",
                f"choose one of {', '.join(supported)}",
            )
        )
    ia3 = spec.peft.ia3
    explicit = "auto" not in (ia3.feedforward_modules, ia3.target_modules)
    if spec.peft.method == "ia3" and explicit and not set(ia3.feedforward_modules) <= set(ia3.target_modules):
        extra = sorted(set(ia3.feedforward_modules) - set(ia3.target_modules))
        issues.append(
            SpecIssue("peft.ia3.feedforward_modules", f"{extra} are not in target_modules", "add them to target_modules")
        )
    if spec.evaluation.select_metric not in spec.evaluation.metrics:
        issues.append(SpecIssue("evaluation.select_metric", f"{spec.evaluation.select_metric!r} is not computed",
                                "add it to evaluation.metrics or choose one of them"))
    missing = missing_packages(train.loggers)
    if missing:
        issues.append(SpecIssue("train.loggers", f"{', '.join(missing)} is not installed here",
                                f"{INSTALL_HINT}, or remove {', '.join(missing)}"))
    model_problems = _check_model(loaded)
    issues += model_problems or _check_model_fit(loaded)
    issues += _check_dataset(loaded)
    issues += _check_slurm(loaded)
    issues += _check_memory_ladder(spec, engine)
    # The engine's own checks (global batch vs. its data-parallel size, its section of the spec).
    issues += engine.validate(loaded)
    if spec.engine != "automodel" and "automodel" in spec.model_fields_set:
        issues.append(SpecIssue("automodel", f"applies to engine automodel, not {spec.engine}",
                                "remove it or set engine: automodel"))
    if spec.peft.method != "adapter" and "adapter" in spec.peft.model_fields_set:
        issues.append(SpecIssue("peft.adapter", f"applies to method adapter, not {spec.peft.method}", "remove it"))
    return issues


def _check_memory_ladder(spec: Any, engine: Any) -> list[SpecIssue]:
    """Rungs pinned on must exist for the engine and go together (memory_ladder.py)."""
    train, memory = spec.train, spec.train.memory
    if memory == "auto":
        return []
    issues = []
    offered = getattr(engine, "memory_rungs", ("checkpointing",))
    for rung in RUNGS:
        if getattr(memory, rung) is True and rung not in offered:
            issues.append(SpecIssue(f"train.memory.{rung}", f"engine {spec.engine} does not implement this rung (it"
                                    f" offers {', '.join(offered)})", "set it to auto or false"))
    if memory.checkpointing is False and train.activation_checkpointing:
        issues.append(SpecIssue("train.memory.checkpointing", "false contradicts train.activation_checkpointing: true",
                                "drop one of the two"))
    if memory.offload is True and memory.checkpointing is False:
        issues.append(SpecIssue("train.memory.offload", "offload moves checkpointed activations, but checkpointing is"
                                " false", "set train.memory.checkpointing to auto or true"))
    if memory.shard is True and memory.quantize_base is True:
        issues.append(SpecIssue("train.memory.quantize_base", "4-bit base weights are not combined with sharding"
                                " (FSDP2 does not shard packed 4-bit weights)", "set one of shard, quantize_base to"
                                " false or auto"))
    if memory.shard is True and engine.data_parallel_size(spec) < 2:
        issues.append(SpecIssue("train.memory.shard", "sharding needs more than one GPU", "set train.devices > 1"))
    return issues


def _check_model(loaded: LoadedSpec) -> list[SpecIssue]:
    model = loaded.spec.model
    if (model.repo_id is None) == (model.path is None):
        return [SpecIssue("model", "give exactly one of repo_id and path", "set model.repo_id or model.path")]
    if model.path is not None:
        path = loaded.resolve(model.path)
        if not path.is_dir():
            return [SpecIssue("model.path", f"{path} does not exist", "point it at a model directory or use repo_id")]
        if not (path / "config.json").is_file():
            return [
                SpecIssue("model.path", f"{path} has no config.json", "point it at a Hugging Face model directory")
            ]
    return []


def _check_model_fit(loaded: LoadedSpec) -> list[SpecIssue]:
    """Target modules and family support, against the model built on the meta device from its config.json
    (when that file is on disk; a Hub model not yet cached is checked right after it is fetched)."""
    from peftpipe.model_fit import local_config, model_issues

    config = local_config(loaded)
    return [] if config is None else model_issues(loaded.spec, config)[1]


def _check_dataset(loaded: LoadedSpec) -> list[SpecIssue]:
    return check_dataset(loaded.spec.dataset, loaded.resolve)


def load_dataset_spec(raw: dict[str, Any], base_dir: Path) -> DatasetSpec:
    """A dataset section on its own (``peftpipe data convert``), checked like a run spec's."""
    try:
        dataset = DatasetSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError([_issue_from_pydantic({**item, "loc": ("dataset", *item["loc"])})
                         for item in error.errors()]) from None
    issues = check_dataset(dataset, partial(resolve_relative, base_dir))
    if issues:
        raise SpecError(issues)
    return dataset


def record_keys(data: DatasetSpec) -> set[str] | None:
    """Keys every converted record carries; None when only reading the data tells."""
    if data.format in ("squad", "jsquad"):
        return {"input", "output", "id", "title"}
    if data.format == "squad2":
        return {"input", "output", "id", "title", "is_impossible"}
    if data.format == "pubmedqa":
        return {"input", "output", "pmid"}
    if data.fields is not None and data.fields.metadata is not None:
        return {"input", "output", *data.fields.metadata}
    return None


def check_dataset(data: DatasetSpec, resolve: Callable[[str], Path]) -> list[SpecIssue]:
    """The dataset section's cross-field and file checks (the CSV header included)."""
    if (data.path is None) == (data.train is None):
        return [SpecIssue("dataset", "give exactly one of path and train", "set dataset.path, or dataset.train/test")]
    issues: list[SpecIssue] = []
    if data.train is not None and data.test is None:
        issues.append(SpecIssue("dataset.test", "is required with dataset.train", "add the test file"))
    files: dict[str, Path] = {}
    for key in ("path", "train", "validation", "test"):
        value = getattr(data, key)
        if value is not None and not resolve(value).is_file():
            state = "is a directory, not a file" if resolve(value).is_dir() else "does not exist"
            issues.append(
                SpecIssue(
                    f"dataset.{key}",
                    f"{resolve(value)} {state}",
                    "correct the path (a spec's relative paths are relative to the spec file)",
                )
            )
        elif value is not None:
            files[key] = resolve(value)
    if data.pubmedqa.ground_truth is not None and not resolve(data.pubmedqa.ground_truth).is_file():
        issues.append(SpecIssue("dataset.pubmedqa.ground_truth", f"{resolve(data.pubmedqa.ground_truth)} does not "
                                "exist", "point it at test_ground_truth.json"))
    if data.path is not None and data.split.validation + data.split.test >= 1.0:
        issues.append(
            SpecIssue("dataset.split", "validation + test leave no training data", "keep their sum below 1")
        )
    issues += _check_format_options(data)
    known = record_keys(data)
    if known is not None:
        used = set(template_fields(data.prompt_template))
        if used - known:
            issues.append(
                SpecIssue(
                    "dataset.prompt_template",
                    f"uses {sorted(used - known)}, which {data.format} records do not have",
                    f"use only {sorted(known)}",
                )
            )
    if data.format == "csv":
        issues += _check_csv_headers(data, files)
    return issues


def _check_format_options(data: DatasetSpec) -> list[SpecIssue]:
    """Options that the chosen format does not read are mistakes, not harmless extras."""
    issues: list[SpecIssue] = []
    for block in ("squad2", "jsquad", "pubmedqa"):
        if block in data.model_fields_set and data.format != block:
            issues.append(SpecIssue(f"dataset.{block}", f"applies to format {block}, not {data.format}",
                                    "remove it or change dataset.format"))
    if data.fields is not None and data.format not in CUSTOM_FORMATS:
        issues.append(SpecIssue("dataset.fields", f"applies to jsonl, json and csv, not {data.format}",
                                "remove it (this format builds input with dataset.input_template)"))
    if data.delimiter is not None and data.format != "csv":
        issues.append(SpecIssue("dataset.delimiter", f"applies to csv, not {data.format}", "remove it"))
    if data.input_template is not None:
        if data.format in CUSTOM_FORMATS:
            issues.append(SpecIssue("dataset.input_template", f"applies to squad, squad2, jsquad and pubmedqa, not "
                                    f"{data.format}", 'map fields with dataset.fields, e.g. input: "{question}"'))
        else:
            try:
                used = set(template_fields(data.input_template))
            except ValueError as error:
                return issues + [SpecIssue("dataset.input_template", f"is not a valid template ({error})",
                                           "write {name} placeholders, and {{ or }} for literal braces")]
            unknown = used - TEMPLATE_KEYS[data.format]
            if unknown:
                issues.append(SpecIssue("dataset.input_template", f"uses {sorted(unknown)}, which {data.format} "
                                        "records do not have", f"use only {sorted(TEMPLATE_KEYS[data.format])}"))
    return issues


def _check_csv_headers(data: DatasetSpec, files: dict[str, Path]) -> list[SpecIssue]:
    from peftpipe.data.custom import FieldMapper, missing_columns, read_csv_header

    mapper = FieldMapper(data.fields)
    issues: list[SpecIssue] = []
    for path in files.values():
        header = read_csv_header(path, data)
        for column, key in missing_columns(header, mapper).items():
            field = key if key.startswith("dataset.fields.") else "dataset.fields"
            issues.append(SpecIssue(field, f"needs column {column!r}, which the header of {path} lacks (it has "
                                    f"{', '.join(map(repr, header)) or 'no columns'})",
                                    "rename the column in the file or change the mapping (and dataset.delimiter "
                                    "for TSV)"))
    return issues


def _check_slurm(loaded: LoadedSpec) -> list[SpecIssue]:
    execution = loaded.spec.execution
    if execution.backend != "slurm":
        return []
    slurm = execution.slurm
    issues: list[SpecIssue] = []
    container = slurm.container
    if container.runtime != "none" and not container.image:
        example = "/shared/images/nemo-24.03.sif" if container.runtime == "singularity" else "nvcr.io#nvidia/nemo:24.03"
        issues.append(SpecIssue("execution.slurm.container.image", f"is required for runtime {container.runtime}",
                                f"name the image, e.g. {example}"))
    if container.runtime == "singularity" and container.image and not container.image.endswith(".sif"):
        issues.append(SpecIssue("execution.slurm.container.image", f"{container.image!r} is not a .sif file",
                                "build one with `singularity build nemo.sif docker://...` and give its path"))
    if slurm.max_mem is not None and memory_mb(slurm.max_mem) < memory_mb(slurm.mem):
        issues.append(SpecIssue("execution.slurm.max_mem", f"{slurm.max_mem} is below mem {slurm.mem}",
                                "set max_mem to the partition's memory per node, at least mem"))
    if time_limit_s(slurm.time_limit) <= 2 * slurm.signal_lead_s:
        issues.append(SpecIssue("execution.slurm.time_limit",
                                f"{slurm.time_limit} leaves no training time before the checkpoint signal"
                                f" {slurm.signal_lead_s} s ahead of it",
                                f"use a time limit above {2 * slurm.signal_lead_s} s or lower signal_lead_s"))
    return issues


# --- pydantic errors into field / problem / fix -------------------------------------------------

_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "string": "text",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
}


def _issue_from_pydantic(error: dict[str, Any]) -> SpecIssue:
    loc = tuple(error["loc"])
    field = ".".join(str(part) for part in loc) or "spec"
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx", {})
    if kind == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        return SpecIssue(
            field, f"unknown key; valid keys here are {', '.join(valid)}", f"remove it or rename it{hint}"
        )
    if kind == "missing":
        return SpecIssue(field, "is required but missing", "add it")
    if kind == "literal_error":
        return SpecIssue(field, f"{value!r} is not one of {ctx.get('expected')}", "use one of the listed values")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        relation = {"greater_than": "> ", "greater_than_equal": ">= ", "less_than": "< ", "less_than_equal": "<= "}
        bound = next(iter(ctx.values()))
        return SpecIssue(field, f"{value!r} is out of range", f"use a value {relation[kind]}{bound}")
    if kind == "too_short":
        return SpecIssue(field, "is empty", "give at least one entry")
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        problem, _, fix = message.partition(" Fix: ")
        return SpecIssue(field, problem.rstrip("."), fix.rstrip(".") or "correct the value")
    for word, description in _TYPE_WORDS.items():
        if kind.startswith(word):
            return SpecIssue(field, f"expected {description}, got {value!r}", f"write {description}")
    return SpecIssue(field, error["msg"], "correct the value")


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = RunSpec
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        inner = _model_in(annotation)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType, list):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
