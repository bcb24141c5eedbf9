"""Content fingerprints of records: stable splits and train/test overlap checks.

A record's fingerprint is a digest of its normalised ``input`` and ``output`` (Unicode NFC,
whitespace runs collapsed), so the same question and answer have the same fingerprint in every
file and every run. The split of a record read from one file is a function of its fingerprint and
the seed alone: appending records to a dataset never moves an existing record to another split,
so a re-tune's test split never holds a record the previous adapter trained on.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FINGERPRINTS_FILE = "train_fingerprints.txt"
_SCALE = float(1 << 64)


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def record_fingerprint(record: dict[str, Any]) -> str:
    """32 hex digits over the normalised input and output; metadata does not count."""
    content = f"{_normalise(record['input'])}\x00{_normalise(record['output'])}"
    return hashlib.blake2b(content.encode(), digest_size=16).hexdigest()


def split_point(fingerprint: str, seed: int) -> float:
    """Where the record falls in [0, 1) for ``seed``: uniform over records, fixed per record."""
    digest = hashlib.blake2b(f"{seed}:{fingerprint}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


class StableSplitter:
    """Assigns each record by its own content: test below ``test``, validation up to
    ``test + validation``, train above.

    A dataset too small to draw a record into a held-out split with a ratio above zero gets the
    train record with the lowest split point there (test first, then validation). Growing the
    dataset keeps that property: the record chosen stays the lowest, or a new record goes below
    it, so no record that trained an earlier adapter ever lands in a later test split.
    Two train records are held back until the end for this; everything else streams through.
    """

    def __init__(self, validation: float, test: float, seed: int):
        self.bounds = (("test", test), ("validation", test + validation))
        self.ratios = {"test": test, "validation": validation}
        self.seed = seed
        self.held_out = {"test": 0, "validation": 0}
        self.lowest: list[tuple[float, str]] = []  # the two train records with the lowest split points

    def add(self, record: dict[str, Any], line: str) -> list[tuple[str, str]]:
        """(split, line) pairs to write now; a train record may be held back until :meth:`finish`."""
        point = split_point(record_fingerprint(record), self.seed)
        for split, bound in self.bounds:
            if point < bound:
                self.held_out[split] += 1
                return [(split, line)]
        self.lowest.append((point, line))
        self.lowest.sort()
        return [("train", self.lowest.pop()[1])] if len(self.lowest) > 2 else []

    def finish(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        for split in ("test", "validation"):
            if self.ratios[split] > 0 and self.held_out[split] == 0 and self.lowest:
                pairs.append((split, self.lowest.pop(0)[1]))
                self.held_out[split] += 1
        return pairs + [("train", line) for _, line in self.lowest]


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def write_fingerprints(jsonl: Path, out: Path) -> Path:
    """One fingerprint per line for each record of ``jsonl`` (what a run trained on)."""
    with out.open("w", encoding="ascii") as handle:
        for record in read_records(jsonl):
            handle.write(record_fingerprint(record) + "\n")
    return out


def parse_fingerprints(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


def overlapping_records(test_file: Path, trained_on: Iterable[str]) -> list[dict[str, Any]]:
    """The records of ``test_file`` whose fingerprint is among ``trained_on`` (with their line number)."""
    seen = set(trained_on)
    return [{"line": n, "fingerprint": fp, "input": record["input"][:80], "output": record["output"][:40]}
            for n, record in enumerate(read_records(test_file), start=1)
            if (fp := record_fingerprint(record)) in seen]
