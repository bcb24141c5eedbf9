"""``peftpipe render SPEC --stage STAGE [--json]``: what a stage would run, without running it.

With ``--json`` it prints the NeMo command as one object (``{"profile", "stage", "script",
"argv"}`` for conversion, ``"overrides"`` for fine-tuning and generation, exactly as passed on
the command line) so that other tools can check it; otherwise the stage's Slurm batch script.

Both come from the engine's ``job()``, the same call the backends submit, so what is printed
here is byte for byte what a run submits (for the same run id, attempt and model directory).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from cli.specs import checked_run_id_option, errors, load_or_exit, parse_overrides
from peftpipe.attempts import first_attempt
from peftpipe.engines import engine_for
from peftpipe.slurm.render import render_batch_script
from peftpipe.spec import LoadedSpec
from peftpipe.stages import run_paths

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
    if stage not in ("convert", "finetune", "evaluate"):
        errors.print(f"--stage {stage!r}: expected convert, finetune or evaluate")
        raise typer.Exit(2)
    run_id = checked_run_id_option(run_id)
    loaded = load_or_exit(spec, parse_overrides(set_))
    paths = run_paths(loaded, run_id or f"{loaded.spec.name}-render")
    settings = replace(first_attempt(loaded.spec, micro_batch_size), attempt=attempt)
    try:
        command = engine_for(loaded.spec.engine).job(loaded, paths, stage, settings, _model_dir(loaded, model_path))
    except ValueError as error:  # SpecError and missing inputs: field, problem and fix
        errors.print(str(error), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(command.described, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_batch_script(command.job))
        for path in command.shown:
            sys.stdout.write(f"\n# --- {path} (written when the job is submitted) ---\n{command.files[path]}")


def _model_dir(loaded: LoadedSpec, model_path: Path | None) -> Path | None:
    """The HF model directory the stage reads; None when only fetch-model will know it (a Hub model)."""
    if model_path is not None:
        return model_path.resolve()
    if loaded.spec.model.path is not None:
        return loaded.resolve(loaded.spec.model.path)
    return None
