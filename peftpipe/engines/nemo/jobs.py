"""The nemo engine's stages as commands and Slurm job requests.

A :class:`NemoCommand` is what runs inside the container (script + argv or Hydra overrides), the
object ``peftpipe render --json`` prints; :func:`job_request` wraps it into the lead's
:class:`~peftpipe.slurm.render.JobRequest` with the resources that stage needs.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from peftpipe.engines.nemo import convert
from peftpipe.spec_issues import SpecError
from peftpipe.engines.nemo.finetune import finetune_overrides
from peftpipe.engines.nemo.generate import generate_overrides
from peftpipe.engines.nemo.layout import NemoPaths, base_nemo
from peftpipe.engines.nemo.profiles import Profile, get_profile
from peftpipe.engines.nemo.resources import convert_precision, generate_layout
from peftpipe.paths import RunPaths
from peftpipe.slurm.jobs import stage_job
from peftpipe.slurm.render import JobRequest
from peftpipe.spec import LoadedSpec, memory_mb, memory_text

STAGES = ("convert", "finetune", "evaluate")


@dataclass(frozen=True)
class NemoCommand:
    """One NeMo script invocation: ``argv`` for the argparse converters, ``overrides`` for the Hydra scripts."""

    profile: str
    stage: str
    script: str
    argv: list[str] | None = None
    overrides: list[str] | None = None
    notes: tuple[str, ...] = ()

    @property
    def script_args(self) -> list[str]:
        """What follows the interpreter: the script path, then its arguments exactly as passed."""
        return [self.script, *(self.argv if self.argv is not None else self.overrides or [])]

    def as_json(self) -> dict[str, Any]:
        key = "argv" if self.argv is not None else "overrides"
        return {"profile": self.profile, "stage": self.stage, "script": self.script,
                key: self.argv if self.argv is not None else self.overrides}


def profile_of(loaded: LoadedSpec) -> Profile:
    if loaded.spec.nemo.profile is None:
        raise SpecError.single("nemo.profile", "is required with engine nemo", "set the NeMo container's profile")
    return get_profile(loaded.spec.nemo.profile)


def convert_command(loaded: LoadedSpec, paths: NemoPaths, model_dir: Path,
                    hf_config: dict[str, Any] | None = None) -> NemoCommand:
    spec, profile = loaded.spec, profile_of(loaded)
    hf_config = hf_config if hf_config is not None else convert.read_hf_config(model_dir)
    converter = convert.choose_converter(hf_config, profile)
    precision = convert_precision(spec)
    if precision is None:
        raise SpecError.single("nemo.convert.precision", "cannot follow train.precision auto without the GPU model",
                            "set nemo.convert.precision or execution.slurm.gpu_type")
    gpus = spec.nemo.convert.gpus
    argv = convert.converter_argv(converter, model_dir, paths.converted_nemo, precision, hf_config, gpus)
    caveat = convert.precision_caveat(converter, precision, gpus)
    notes = (caveat,) if caveat else ()
    return NemoCommand(profile.name, "convert", profile.script_path(converter.script, spec.nemo.root), argv=argv,
                       notes=notes + converter.notes)


def finetune_command(loaded: LoadedSpec, paths: NemoPaths, micro_batch_size: int | None = None,
                     activation_checkpointing: bool | None = None) -> NemoCommand:
    spec, profile = loaded.spec, profile_of(loaded)
    overrides = finetune_overrides(spec, paths, base_nemo(loaded, paths), micro_batch_size, activation_checkpointing)
    return NemoCommand(profile.name, "finetune", profile.script_path(profile.finetune_script, spec.nemo.root),
                       overrides=overrides)


def generate_command(loaded: LoadedSpec, paths: NemoPaths) -> NemoCommand:
    spec, profile = loaded.spec, profile_of(loaded)
    overrides = generate_overrides(spec, paths, base_nemo(loaded, paths), profile)
    return NemoCommand(profile.name, "generate", profile.script_path(profile.generate_script, spec.nemo.root),
                       overrides=overrides)


def convert_mem(loaded: LoadedSpec, hf_config: dict[str, Any]) -> str:
    """The convert job's --mem: nemo.convert.mem, else the larger of the estimate and slurm.mem."""
    spec = loaded.spec
    if spec.nemo.convert.mem:
        return spec.nemo.convert.mem
    estimate_mb = convert.host_memory_gib(hf_config) * 1024
    return memory_text(max(estimate_mb, memory_mb(spec.execution.slurm.mem)))


def job_request(loaded: LoadedSpec, run_id: str, run_paths: RunPaths, command: NemoCommand, attempt: int, *,
                host_python: str, model_dir: Path | None = None, hf_config: dict[str, Any] | None = None,
                mem: str | None = None, exclude: tuple[str, ...] = ()) -> JobRequest:
    """The Slurm job for ``command``: GPUs, nodes, memory and binds for its stage.

    ``mem`` is the attempt's host memory (a retry after a host OOM raises it); default
    ``execution.slurm.mem`` (``convert_mem`` for the convert job).
    """
    spec = loaded.spec
    paths = NemoPaths(run_paths)
    if command.stage == "convert":
        if model_dir is None:
            raise ValueError("the convert job needs the HF model directory it reads")
        config = hf_config if hf_config is not None else convert.read_hf_config(model_dir)
        job = stage_job(spec, run_id, run_paths, "convert", attempt, command.script_args, host_python=host_python,
                        gpus_per_node=spec.nemo.convert.gpus, nodes=1, mem=convert_mem(loaded, config),
                        model_path=model_dir)
    else:
        base = base_nemo(loaded, paths)
        # The base .nemo is bound only when it lives outside the run directory (nemo.nemo_path).
        bind = base.parent if not base.is_relative_to(run_paths.root) else None
        if command.stage == "finetune":
            devices, nodes, stage = spec.train.devices, spec.train.num_nodes, "finetune"
        else:
            layout = generate_layout(spec)
            devices, nodes, stage = layout.devices, layout.nodes, "evaluate"
        job = stage_job(spec, run_id, run_paths, stage, attempt, command.script_args, host_python=host_python,
                        gpus_per_node=devices, nodes=nodes, mem=mem, model_path=bind, exclude=exclude)
    lines = [f"NeMo container profile {command.profile}: NVIDIA/NeMo {get_profile(command.profile).ref}."]
    lines += [textwrap.fill(f"Note: {note}", width=100) for note in command.notes]
    return replace(job, description=job.description + "\n" + "\n".join(lines))
