"""Reading source records and writing NeMo JSONL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class DatasetError(ValueError):
    """Input data that cannot be converted; the message names the file and the place."""


def read_jsonl(path: Path) -> Iterator[Record]:
    """NeMo JSONL records, one per line, checked for ``input`` and ``output``."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}:{number}: malformed JSON ({error.msg})") from None
            for key in ("input", "output"):
                if not isinstance(record.get(key), str):
                    raise DatasetError(f"{path}:{number}: record has no text field {key!r}")
            yield record


def write_jsonl(records: Iterable[Record], path: Path) -> int:
    """Write records as UTF-8 JSONL (non-ASCII text stays readable); return how many."""
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the names and bytes of ``paths``: equal fingerprints mean equal data."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
