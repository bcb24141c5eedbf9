"""Checks of an ``engine: automodel`` spec before anything runs.

Each rule is an AutoModel behaviour that would otherwise fail a job at start-up (a ValueError of
its step scheduler, a missing module in the environment) or train something other than what the
spec says (LoRA on no module, a prompt AutoModel joins differently from the evaluate stage).
"""

from __future__ import annotations

from pathlib import Path

from peftpipe.engines.automodel.config import data_parallel_size
from peftpipe.spec import LoadedSpec, RunSpec
from peftpipe.spec_issues import SpecIssue


def issue(field: str, problem: str, fix: str) -> SpecIssue:
    return SpecIssue(field, problem, fix)


def check_automodel(loaded: LoadedSpec) -> list[SpecIssue]:
    spec = loaded.spec
    issues = _check_batch(spec) + _check_precision(spec) + _check_template(spec)
    if spec.execution.backend == "slurm" and spec.execution.slurm.launcher == "srun":
        issues.append(issue("execution.slurm.launcher", "srun starts one task per GPU, but AutoModel reads"
                            " torchrun's environment (LOCAL_RANK) to run in-process", "use launcher: torchrun"))
    issues += _check_environment(loaded)
    return issues


def _check_batch(spec: RunSpec) -> list[SpecIssue]:
    train, automodel = spec.train, spec.automodel
    issues = []
    world = train.devices * train.num_nodes
    tp = automodel.tensor_parallel_size
    if tp > 1 and automodel.strategy == "ddp":
        issues.append(issue("automodel.tensor_parallel_size", f"{tp} needs strategy fsdp2 (DDP replicates whole"
                            " layers)", "set automodel.strategy: fsdp2, or tensor_parallel_size: 1"))
    if world % tp:
        issues.append(issue("automodel.tensor_parallel_size", f"{tp} does not divide the {world} ranks"
                            f" (train.devices {train.devices} x num_nodes {train.num_nodes})",
                            "use a divisor of the rank count"))
        return issues
    per_step = train.micro_batch_size * data_parallel_size(spec)
    if train.global_batch_size % per_step:
        issues.append(issue("train.global_batch_size", f"{train.global_batch_size} is not divisible by"
                            f" micro_batch_size {train.micro_batch_size} x data-parallel {data_parallel_size(spec)}"
                            " (AutoModel's step scheduler refuses it)", f"use a multiple of {per_step}"))
    return issues


def _check_precision(spec: RunSpec) -> list[SpecIssue]:
    if spec.train.precision == "fp16":
        return [issue("train.precision", "fp16 is not a precision the automodel engine runs (AutoModel's recipe"
                      " has no loss scaling)", "use bf16 (GPUs from A100 on) or fp32")]
    return []


def _check_template(spec: RunSpec) -> list[SpecIssue]:
    template = spec.dataset.prompt_template
    prefix = template[: template.rindex("{output}")]
    if not prefix.endswith(" ") or prefix.endswith("  "):
        return [issue("dataset.prompt_template", f"{template!r}: AutoModel's instruction dataset joins the prompt"
                      " and the answer with exactly one space, so the text it trains on would differ from the"
                      " prompt the evaluate stage sends", "end the template with one space before {output}, e.g."
                      " '{input}\\nAnswer: {output}'")]
    return []


def uses_container(spec: RunSpec) -> bool:
    return spec.execution.backend == "slurm" and spec.execution.slurm.container.runtime != "none"


def _check_environment(loaded: LoadedSpec) -> list[SpecIssue]:
    """The venv the jobs run AutoModel from exists and holds the version the YAML is rendered for."""
    spec = loaded.spec
    automodel = spec.automodel
    if uses_container(spec):
        if automodel.venv is not None:
            return [issue("automodel.venv", f"is not used: AutoModel runs from the image of runtime"
                          f" {spec.execution.slurm.container.runtime}, with its `python`",
                          "remove automodel.venv, or set execution.slurm.container.runtime: none")]
        return []
    if automodel.venv is None:
        return [issue("automodel.venv", "is required when AutoModel runs outside a container (it lives in an"
                      " environment of its own: it pins transformers exactly)", "create one with"
                      " scripts/setup_automodel.sh and set automodel.venv: .venv-automodel (relative to the spec"
                      " file), or run it in a container (execution.slurm.container)")]
    venv = loaded.resolve(automodel.venv)
    found = installed_version(venv)
    if not (venv / "bin" / "python").exists():
        return [issue("automodel.venv", f"{venv} is not a virtual environment (no bin/python)",
                      "create it with scripts/setup_automodel.sh, or point automodel.venv at one")]
    if found is None:
        return [issue("automodel.venv", f"{venv} has no nemo-automodel installed",
                      f"pip install nemo-automodel=={automodel.version} triton==3.8.0 into it"
                      " (scripts/setup_automodel.sh does)")]
    if found != automodel.version:
        return [issue("automodel.venv", f"{venv} holds nemo-automodel {found}, not {automodel.version}, the"
                      " version the YAML is rendered for", f"install nemo-automodel=={automodel.version} there, or"
                      f" set automodel.version to a supported one")]
    return []


def installed_version(venv: Path) -> str | None:
    """The nemo-automodel version of a venv, from its dist-info folder (no interpreter started)."""
    for dist_info in sorted(venv.glob("lib/python3*/site-packages/nemo_automodel-*.dist-info")):
        return dist_info.name[len("nemo_automodel-"): -len(".dist-info")]
    return None


def interpreter(loaded: LoadedSpec) -> str:
    """The Python that runs AutoModel: the venv's, or the container's ``python``."""
    spec = loaded.spec
    if uses_container(spec):
        return spec.execution.slurm.container.python
    return str(loaded.resolve(spec.automodel.venv) / "bin" / "python") if spec.automodel.venv else "python"
