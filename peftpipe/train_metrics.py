"""Reading the per-step training log (``finetune/metrics.jsonl``) while it is written or after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the log; a line still being written (no newline yet) is left for later."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.split("\n")[:-1] if not text.endswith("\n") else text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn line of a crashed writer
    return records


def last_logged(path: Path) -> tuple[int, float] | None:
    """(step, loss) of the last logged step, or None before the first."""
    records = read_records(path)
    return (int(records[-1]["step"]), float(records[-1]["loss"])) if records else None
