"""Reading a run spec on the command line: ``--set KEY=VALUE`` overrides, and one clear error per problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from peftpipe.safe_names import UnsafeName, check_run_id
from peftpipe.spec import LoadedSpec
from peftpipe.validation import SpecError, load_spec

errors = Console(stderr=True)

INVALID_SPEC_EXIT = 2

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec key before validation, e.g. --set train.micro_batch_size=2."),
]


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            errors.print(f"--set {pair!r}: expected KEY=VALUE, e.g. train.micro_batch_size=2")
            raise typer.Exit(INVALID_SPEC_EXIT)
        overrides[key] = yaml.safe_load(value)
    return overrides


def load_or_exit(spec: Path, overrides: dict[str, Any]) -> LoadedSpec:
    try:
        return load_spec(spec, overrides)
    except SpecError as error:
        errors.print(f"[bold red]{spec}: invalid run spec[/]")
        for issue in error.issues:
            errors.print(f"  {issue}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID_SPEC_EXIT) from None


def checked_run_id_option(run_id: str | None, where: str = "--run-id") -> str | None:
    """``run_id`` (the option or argument ``where``) if it follows the run-id rule; else one line and exit 2."""
    try:
        return None if run_id is None else check_run_id(run_id, where)
    except UnsafeName as error:
        errors.print(str(error), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID_SPEC_EXIT) from None
