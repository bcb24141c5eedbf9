"""Hostile data files (issue 18): JSON nested deeper than Python's parser can recurse.

A 100,000-level document is a few hundred kilobytes; json.loads raises RecursionError on it.
With `on_bad_record: skip` such a record is skipped and listed like any other bad record;
with `error`, or when the whole file is one document, the conversion stops with one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from peftpipe.data.convert import resolve_sources
from peftpipe.data.prepare import convert_dataset
from peftpipe.data.records import DatasetError
from peftpipe.spec import DatasetSpec, resolve_relative

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_STRINGS = '{"a": "]]]}}\\"[[[", "b": ' + DEEP + "}"  # brackets inside strings do not count
TOO_DEEP = "the JSON is nested deeper than the parser allows (Python's recursion limit)"
FAQ = {"input": "{question}", "output": "answer"}
SPLIT = {"validation": 0.0, "test": 0.0}


def record(number: int) -> str:
    return json.dumps({"question": f"question {number}?", "answer": f"answer {number}"})


def convert(directory: Path, fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    dataset = DatasetSpec(format=fmt, **options)
    sources = resolve_sources(dataset, lambda relative: resolve_relative(directory, relative))
    return convert_dataset(dataset, sources, directory / "out", seed=1)


def kept_questions(directory: Path) -> list[str]:
    return [json.loads(line)["input"] for line in (directory / "out" / "train.jsonl").read_text().splitlines()]


def test_a_deeply_nested_jsonl_line_is_a_skipped_record(tmp_path: Path) -> None:
    lines = [record(1), '{"question": ' + DEEP + ', "answer": "x"}', record(3), DEEP_STRINGS, record(5)]
    (tmp_path / "faq.jsonl").write_text("\n".join(lines) + "\n")
    stats = convert(tmp_path, "jsonl", {"path": "faq.jsonl", "fields": FAQ, "on_bad_record": "skip", "split": SPLIT})
    path = str(tmp_path / "faq.jsonl")
    assert stats["skipped"] == [{"file": path, "line": 2, "where": "", "reason": TOO_DEEP},
                                {"file": path, "line": 4, "where": "", "reason": TOO_DEEP}]
    assert sorted(kept_questions(tmp_path)) == ["question 1?", "question 3?", "question 5?"]

    with pytest.raises(DatasetError, match=re.escape(f"faq.jsonl:2: {TOO_DEEP}")) as stopped:
        convert(tmp_path, "jsonl", {"path": "faq.jsonl", "fields": FAQ, "on_bad_record": "error", "split": SPLIT})
    assert "\n" not in str(stopped.value)


def test_a_deeply_nested_json_array_element_is_a_skipped_record(tmp_path: Path) -> None:
    (tmp_path / "faq.json").write_text(f"[{record(1)},\n{DEEP_STRINGS},\n{DEEP},\n{record(4)}]")
    stats = convert(tmp_path, "json", {"path": "faq.json", "fields": FAQ, "on_bad_record": "skip", "split": SPLIT})
    path = str(tmp_path / "faq.json")
    assert stats["skipped"] == [{"file": path, "line": 2, "where": "element [1]", "reason": TOO_DEEP},
                                {"file": path, "line": 3, "where": "element [2]", "reason": TOO_DEEP}]
    assert sorted(kept_questions(tmp_path)) == ["question 1?", "question 4?"]


def test_a_deeply_nested_whole_document_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "squad.json").write_text('{"data": ' + DEEP + "}")
    with pytest.raises(DatasetError) as stopped:
        convert(tmp_path, "squad", {"path": "squad.json", "on_bad_record": "skip"})
    assert str(stopped.value) == f"{tmp_path / 'squad.json'}: {TOO_DEEP}. Fix: flatten the record or remove it."
