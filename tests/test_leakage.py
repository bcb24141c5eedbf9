"""Test records an adapter trained on are found by content, however the file spells them."""

from __future__ import annotations

import json
from pathlib import Path

from peftpipe.data.fingerprints import read_records, record_fingerprint
from peftpipe.leakage import check_overlap


def test_overlap_is_found_by_content_and_unknown_training_data_is_said(tmp_path: Path) -> None:
    train = [{"input": f"question {n}", "output": f"answer {n}"} for n in range(10)]
    test = tmp_path / "test.jsonl"
    # Line 2 is training record 3 with other whitespace and an id; lines 1 and 3 are new.
    test.write_text("".join(json.dumps(r) + "\n" for r in [
        {"input": "question 42", "output": "answer 42"},
        {"input": "  question   3 ", "output": "answer 3", "id": "q3"},
        {"input": "question 3", "output": "answer 4"}]))
    report = check_overlap(test, {"new": {record_fingerprint(r) for r in train[:5]},
                                  "old": {record_fingerprint(r) for r in train[5:]}, "older": None})
    assert report.test_records == 3
    assert [r["line"] for r in report.leaked["new"]] == [2]
    assert set(report.leaked) == {"new"} and report.unknown == ["older"]
    assert [row["trained on"] for row in report.rows()] == [1, 0, "unknown (no data/train_fingerprints.txt)"]
    assert "new trained on 1 of the 3 test records (lines 2)" in report.message()
    assert "evaluation.test_overlap: warn" in report.message()
    assert len(list(read_records(test))) == 3
