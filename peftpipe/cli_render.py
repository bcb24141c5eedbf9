"""``peftpipe render SPEC --stage STAGE [--json]``: what a stage would run, without running it.

With ``--json`` it prints the NeMo command as one object (``{"profile", "stage", "script",
"argv"}`` for conversion, ``"overrides"`` for fine-tuning and generation, exactly as passed on
the command line) so that other tools can check it; otherwise the stage's Slurm batch script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec

Stage = Annotated[str, typer.Option("--stage", help="convert, finetune or evaluate.")]


def render(
    spec: Path,
    stage: Stage,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stage's command as JSON.")] = False,
    run_id: Annotated[str | None, typer.Option(help="Run id of the paths; default: <name>-render.")] = None,
    attempt: Annotated[int, typer.Option(min=1, help="Attempt number (log paths).")] = 1,
    micro_batch_size: Annotated[int | None, typer.Option(help="Fine-tune as an OOM retry would.")] = None,
    model_path: Annotated[Path | None, typer.Option(help="The fetched HF model directory; default: model.path.")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a spec key, e.g. train.devices=2.")]
    = None,
) -> None:
    """Print the command or Slurm batch script a stage would run for SPEC."""
    from peftpipe.cli import _load_or_exit, _parse_overrides, checked_run_id_option, errors
    from peftpipe.stages import run_paths

    if stage not in ("convert", "finetune", "evaluate"):
        errors.print(f"--stage {stage!r}: expected convert, finetune or evaluate")
        raise typer.Exit(2)
    run_id = checked_run_id_option(run_id)
    loaded = _load_or_exit(spec, _parse_overrides(set_))
    run_id = run_id or f"{loaded.spec.name}-render"
    paths = run_paths(loaded, run_id)
    try:
        if loaded.spec.engine == "nemo":
            output = _render_nemo(loaded, run_id, paths, stage, attempt, micro_batch_size, model_path, as_json)
        else:
            output = _render_hf(loaded, run_id, paths, stage, attempt, micro_batch_size, model_path, as_json)
    except ValueError as error:  # NemoSpecError and missing inputs: field, problem and fix
        errors.print(str(error), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    sys.stdout.write(output)


def _model_dir(loaded: LoadedSpec, model_path: Path | None) -> Path:
    if model_path is not None:
        return model_path.resolve()
    if loaded.spec.model.path is not None:
        return loaded.resolve(loaded.spec.model.path)
    raise ValueError("model: a Hub model's directory is known only after fetch-model. Fix: pass --model-path with"
                     " the fetched snapshot directory, or set model.path")


def _render_nemo(loaded: LoadedSpec, run_id: str, paths: RunPaths, stage: str, attempt: int,
                 micro_batch_size: int | None, model_path: Path | None, as_json: bool) -> str:
    from peftpipe.engines.nemo import jobs
    from peftpipe.engines.nemo.layout import NemoPaths
    from peftpipe.slurm.render import render_batch_script

    nemo_paths = NemoPaths(paths)
    model_dir = None
    if stage == "convert":
        if loaded.spec.nemo.nemo_path:
            raise ValueError("nemo.nemo_path: names an existing .nemo, so there is no convert stage. Fix: render"
                             " --stage finetune, or remove nemo.nemo_path")
        model_dir = _model_dir(loaded, model_path)
        command = jobs.convert_command(loaded, nemo_paths, model_dir)
    elif stage == "finetune":
        command = jobs.finetune_command(loaded, nemo_paths, micro_batch_size)
    else:
        command = jobs.generate_command(loaded, nemo_paths)
    if as_json:
        return json.dumps(command.as_json(), indent=2, ensure_ascii=False) + "\n"
    job = jobs.job_request(loaded, run_id, paths, command, attempt, host_python=sys.executable, model_dir=model_dir)
    return render_batch_script(job)


def _render_hf(loaded: LoadedSpec, run_id: str, paths: RunPaths, stage: str, attempt: int,
               micro_batch_size: int | None, model_path: Path | None, as_json: bool) -> str:
    from peftpipe.engines.hf import command
    from peftpipe.slurm.jobs import stage_job
    from peftpipe.slurm.render import render_batch_script

    if stage == "convert":
        raise ValueError("--stage: engine hf trains the HF checkpoint directly and has no convert stage. Fix: render"
                         " finetune or evaluate")
    model_dir = _model_dir(loaded, model_path)
    config: dict[str, Any]
    if stage == "finetune":
        config = command.training_config(loaded.spec, model_dir, paths, micro_batch_size)
        module, gpus, nodes = command.TRAIN_MODULE, loaded.spec.train.devices, loaded.spec.train.num_nodes
    else:
        config = command.generation_config(loaded.spec, model_dir, paths)
        module, gpus, nodes = command.GENERATE_MODULE, 1, 1  # the hf generation script is one process
    script_args = ["-m", module, "--config", str(paths.stage_config(stage))]
    if as_json:
        return json.dumps({"engine": "hf", "stage": stage, "script_args": script_args, "config": config},
                          indent=2, ensure_ascii=False) + "\n"
    job = stage_job(loaded.spec, run_id, paths, stage, attempt, script_args, host_python=sys.executable,
                    gpus_per_node=gpus, nodes=nodes, model_path=model_dir)
    return render_batch_script(job)
