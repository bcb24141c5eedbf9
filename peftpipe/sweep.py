"""A sweep: a grid over spec keys expanded into one set of overrides per child run, and the pick of the best.

``{"train.learning_rate": [1e-4, 3e-4], "peft.lora.r": [8, 16]}`` gives four children, in a
stable order (the first key varies slowest), each named ``<sweep id>-<n>``.
"""

from __future__ import annotations

import itertools
from typing import Any

from peftpipe.promotion import LOWER_IS_BETTER
from peftpipe.spec_reference import lookup


class SweepError(ValueError):
    """The grid cannot be expanded; the message names the key and the fix."""


MAX_CHILDREN = 64


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """One override mapping per point of the grid; every key must be a spec key with a list of values."""
    if not grid:
        raise SweepError("the grid is empty. Fix: give at least one key with a list of values, e.g. "
                         "{'train.learning_rate': [1e-4, 3e-4]}")
    for key, values in grid.items():
        entry = lookup(key)
        if entry is None or entry.section:
            raise SweepError(f"{key}: not a spec key. Fix: see `peftpipe spec explain` or docs/spec.md")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{key}: give a non-empty list of values, e.g. [{entry.example}]")
    keys = list(grid)
    points = [dict(zip(keys, combination)) for combination in itertools.product(*(grid[k] for k in keys))]
    if len(points) > MAX_CHILDREN:
        raise SweepError(f"the grid has {len(points)} points, more than {MAX_CHILDREN}. Fix: sweep fewer values")
    return points


def child_run_id(sweep_id: str, index: int) -> str:
    return f"{sweep_id}-{index + 1}"


def best_child(results: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The completed child with the best ``metric`` (loss: lowest), first one on ties; None if none scored."""
    scored = [r for r in results if isinstance(r.get("metrics", {}).get(metric), (int, float))]
    if not scored:
        return None
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return min(scored, key=lambda r: sign * r["metrics"][metric])
