"""``peftpipe runs [SPEC_NAME]`` and ``peftpipe runs compare RUN_A RUN_B ...``: runs with their settings and scores."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.artifacts import BlockOption, EndpointOption, SpecOption, StoreOption, _store

console = Console()
errors = Console(stderr=True)


def print_rows(title: str, rows: list[dict[str, str]], highlight_column: str | None = None) -> None:
    table = Table(title=title)
    for index, column in enumerate(rows[0]):
        table.add_column(column, overflow="fold", no_wrap=index == 0)
    for row in rows:
        style = "bold" if highlight_column and row.get(highlight_column) else None
        table.add_row(*row.values(), style=style)
    console.print(table)


def runs(
    args: Annotated[list[str] | None, typer.Argument(
        metavar="[SPEC_NAME] | compare RUN_ID RUN_ID...",
        help="A spec name lists its runs (all runs without it); `compare` and run ids shows them key by key.")] = None,
    store: StoreOption = None,
    spec: SpecOption = None,
    endpoint_url: EndpointOption = None,
    credentials_block: BlockOption = None,
) -> None:
    """List the runs in the artifact store: status, engine, settings that differ, data fingerprint, metrics,
    promoted; or compare runs key by key (`peftpipe runs compare A B`)."""
    from peftpipe.artifacts import ArtifactStoreError
    from peftpipe.run_table import collect_runs, comparison, runs_table

    words = list(args or [])
    name = words[0] if words and words[0] != "compare" else None
    try:
        found = collect_runs(_store(store, spec, endpoint_url, credentials_block), name)
    except ArtifactStoreError as error:
        errors.print(str(error), markup=False)
        raise typer.Exit(1) from None
    if words[:1] == ["compare"]:
        wanted = words[1:]
        by_id = {run.run_id: run for run in found}
        missing = [run_id for run_id in wanted if run_id not in by_id]
        if len(wanted) < 2 or missing:
            errors.print(f"compare needs two or more run ids of this store; not found: {', '.join(missing) or '-'}."
                         " Fix: pick ids from `peftpipe runs`.", markup=False)
            raise typer.Exit(2)
        print_rows("runs compared (* = differs)", comparison([by_id[run_id] for run_id in wanted]), "differs")
        return
    if len(words) > 1:
        errors.print("give one spec name, or `compare RUN_ID RUN_ID ...`.", markup=False)
        raise typer.Exit(2)
    if not found:
        console.print(f"no runs{f' of {name}' if name else ''} in this store")
        return
    print_rows(f"runs{f' of {name}' if name else ''}", runs_table(found))

