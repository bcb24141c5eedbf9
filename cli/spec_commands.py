"""``peftpipe spec explain|reference`` and ``peftpipe init``: the run spec's keys from the models themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.specs import INVALID_SPEC_EXIT, errors
from peftpipe.spec import DatasetFormat

spec_app = typer.Typer(help="The run spec's reference: every key, its type, default and an example.",
                       no_args_is_help=True)
console = Console()
FORMATS = DatasetFormat.__args__  # type: ignore[attr-defined]


@spec_app.command("explain")
def explain(key: str) -> None:
    """Print one key of the run spec (e.g. train.learning_rate): type, default, allowed values, an example."""
    from peftpipe.spec_reference import close_keys, explain_text, lookup

    entry = lookup(key)
    if entry is None:
        hint = ", ".join(close_keys(key)) or "see docs/spec.md"
        errors.print(f"{key}: no such spec key. Did you mean: {hint}", markup=False, highlight=False)
        raise typer.Exit(INVALID_SPEC_EXIT)
    print(explain_text(entry))


@spec_app.command("reference")
def reference(
    write: Annotated[Path | None, typer.Option(help="Write the Markdown here (e.g. docs/spec.md) instead of"
                                                    " printing it.")] = None,
) -> None:
    """Print the whole spec reference as Markdown (docs/spec.md is this output)."""
    from peftpipe.spec_reference import reference_markdown

    text = reference_markdown()
    if write is None:
        print(text, end="")
        return
    try:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(text, encoding="utf-8")
    except OSError as error:
        errors.print(f"{write}: cannot write it ({error.strerror}). Fix: pass a path in a writable directory.",
                     markup=False)
        raise typer.Exit(1) from None
    console.print(f"wrote {write}")


def init(
    out: Annotated[Path, typer.Argument(help="The spec file to write.")] = Path("spec.yaml"),
    model: Annotated[str, typer.Option(help="Hub repo id (org/name) or a local model directory.")] = ...,
    data_format: Annotated[str, typer.Option("--format", help=f"Dataset format: {', '.join(FORMATS)}.")] = ...,
    data: Annotated[str, typer.Option(help="The dataset file, relative to the spec file.")] = "data/train.json",
    name: Annotated[str | None, typer.Option(help="Run name (lowercase, digits, dashes); default: from the"
                                                  " model and format.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter run spec for MODEL and a dataset format."""
    import re

    from peftpipe.starter_spec import starter_spec

    if data_format not in FORMATS:
        errors.print(f"--format {data_format!r}: unknown. Fix: use one of {', '.join(FORMATS)}.")
        raise typer.Exit(INVALID_SPEC_EXIT)
    if out.exists() and not force:
        errors.print(f"{out} exists. Fix: pass another path, or --force to overwrite it.")
        raise typer.Exit(INVALID_SPEC_EXIT)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{Path(model.rstrip('/')).name}-{data_format}-lora".lower()).strip("-")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(starter_spec(name or slug[:63], model, data_format, data), encoding="utf-8")
    except OSError as error:
        errors.print(f"{out}: cannot write it ({error.strerror}). Fix: pass a path in a writable directory.",
                     markup=False)
        raise typer.Exit(1) from None
    console.print(f"wrote {out}: check it with `peftpipe validate {out}`")
