"""Whether a comparison's test records were training records of an adapter it compares.

Each published run carries ``data/train_fingerprints.txt`` (the content fingerprint of every
record it trained on, :mod:`peftpipe.data.fingerprints`); a test record with one of those
fingerprints would score that adapter on data it has seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftpipe.data.fingerprints import overlapping_records, read_records


class TestOverlap(ValueError):
    """The test records overlap an adapter's training data and ``evaluation.test_overlap`` is ``error``."""

    __test__ = False  # not a pytest class


@dataclass
class OverlapReport:
    """Per adapter: how many test records it trained on (``None``: its training fingerprints are unknown)."""

    test_file: Path
    test_records: int
    overlaps: dict[str, list[dict[str, Any]] | None] = field(default_factory=dict)

    @property
    def leaked(self) -> dict[str, list[dict[str, Any]]]:
        return {who: found for who, found in self.overlaps.items() if found}

    @property
    def unknown(self) -> list[str]:
        return [who for who, found in self.overlaps.items() if found is None]

    def rows(self) -> list[dict[str, Any]]:
        return [{"adapter": who, "test records": self.test_records,
                 "trained on": "unknown (no data/train_fingerprints.txt)" if found is None else len(found),
                 "first lines": ", ".join(str(r["line"]) for r in (found or [])[:10])}
                for who, found in self.overlaps.items()]

    def message(self) -> str:
        parts = [f"{who} trained on {len(found)} of the {self.test_records} test records"
                 f" (lines {', '.join(str(r['line']) for r in found[:10])}{', ...' if len(found) > 10 else ''})"
                 for who, found in self.leaked.items()]
        return (f"test overlap in {self.test_file}: " + "; ".join(parts) + ". Fix: give dataset.test a file"
                " of records no adapter trained on, or set evaluation.test_overlap: warn to compare anyway.")


def check_overlap(test_file: Path, trained: dict[str, set[str] | None]) -> OverlapReport:
    """Compare the test records with each adapter's training fingerprints (``None``: unknown)."""
    report = OverlapReport(test_file, sum(1 for _ in read_records(test_file)))
    for who, fingerprints in trained.items():
        report.overlaps[who] = None if fingerprints is None else overlapping_records(test_file, fingerprints)
    return report
