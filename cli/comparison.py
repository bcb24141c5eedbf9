"""The base-vs-adapter table under ``peftpipe run``'s summary, when the base model was scored too."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_base_vs_adapter(console: Console, metrics: dict[str, Any]) -> None:
    from peftpipe.evaluation import comparison_rows

    rows = comparison_rows(metrics)
    if not rows:
        return
    table = Table(title=f"base model vs adapter on the same {metrics['records']} test records")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
