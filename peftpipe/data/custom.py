"""Custom data into NeMo records: JSONL, a JSON array, CSV/TSV, and NeMo JSONL passed through.

``dataset.fields`` maps source fields to ``input`` and ``output`` (a template such as
``"{question}\\n{context}"`` or one field name); without it, records must already carry text
``input`` and ``output`` keys and are checked and passed through with every other key. JSONL
and CSV are read line by line, so memory does not grow with the file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftpipe.data.records import (
    REENCODE_FIX,
    TOO_DEEP,
    TOO_DEEP_FIX,
    TOO_DEEP_PROBLEM,
    BadRecord,
    DatasetError,
    Item,
    iter_byte_lines,
    iter_text_lines,
    iter_top_level,
    read_json_text,
    undecodable,
)
from peftpipe.spec import DatasetSpec, FieldMapping, template_fields

# Contexts of QA datasets exceed the csv module's default 128 KiB field limit.
csv.field_size_limit(2**31 - 1)
NEMO_KEYS = ("input", "output")


class FieldMapper:
    """Turns a source object into a record (or says why it cannot), by ``dataset.fields``."""

    def __init__(self, mapping: FieldMapping | None):
        self.mapping = mapping
        self.uses: dict[str, list[str]] = {}
        self.templated: dict[str, bool] = {}
        if mapping is not None:
            for target in NEMO_KEYS:
                self.uses[target] = mapping.used_fields(target)
                self.templated[target] = bool(template_fields(getattr(mapping, target)))

    def required_columns(self) -> dict[str, str]:
        """Source field -> the spec key that needs it."""
        if self.mapping is None:
            return {key: f"dataset.fields (unset, so records need {key!r})" for key in NEMO_KEYS}
        needed = {name: f"dataset.fields.{target}" for target in NEMO_KEYS for name in self.uses[target]}
        for name in self.mapping.metadata or []:
            needed.setdefault(name, "dataset.fields.metadata")
        return needed

    def __call__(self, source: Any, path: Path, line: int | None, where: str = "") -> Item:
        if not isinstance(source, dict):
            return BadRecord(path, line, where, f"the record is a JSON {_kind(source)}, not an object",
                             "write one JSON object per record")
        if self.mapping is None:
            return self._pass_through(source, path, line, where)
        values: dict[str, str] = {}
        for target in NEMO_KEYS:
            texts: dict[str, str] = {}
            for name in self.uses[target]:
                value = source.get(name)
                if value is None:
                    state = "is null" if name in source else "is missing"
                    return BadRecord(path, line, where, f"field {name!r} {state} (dataset.fields.{target} uses it)",
                                     f"add {name!r} to the record or change dataset.fields.{target}")
                if isinstance(value, (dict, list)):
                    return BadRecord(path, line, where, f"field {name!r} is a {_kind(value)}, not text",
                                     f"map a text field in dataset.fields.{target}")
                texts[name] = value if isinstance(value, str) else json.dumps(value)
            template = getattr(self.mapping, target)
            values[target] = template.format_map(texts) if self.templated[target] else texts[template]
        if not values["output"].strip():
            return BadRecord(path, line, where, f"the record has an empty output (dataset.fields.output is "
                             f"{self.mapping.output!r})", "fill in the answer or remove the record")
        used = {name for names in self.uses.values() for name in names}
        keep = self.mapping.metadata if self.mapping.metadata is not None else [k for k in source if k not in used]
        for name in keep:
            if name not in source:
                return BadRecord(path, line, where, f"metadata field {name!r} is missing",
                                 "add it to the record or remove it from dataset.fields.metadata")
        metadata = {name: source[name] for name in keep if name not in NEMO_KEYS}
        return {"input": values["input"], "output": values["output"], **metadata}

    @staticmethod
    def _pass_through(source: dict[str, Any], path: Path, line: int | None, where: str) -> Item:
        for key in NEMO_KEYS:
            if key not in source:
                return BadRecord(path, line, where, f"the record has no {key!r} field",
                                 f"add {key!r}, or map source fields with dataset.fields")
            if not isinstance(source[key], str):
                return BadRecord(path, line, where, f"{key!r} is a {_kind(source[key])}, not text",
                                 f"write {key!r} as a JSON string")
        if not source["output"].strip():
            return BadRecord(path, line, where, "the record has an empty output", "fill in the answer or remove the record")
        return source


def read_jsonl(path: Path, dataset: DatasetSpec) -> Iterator[Item]:
    """One item per non-blank line."""
    mapper = FieldMapper(dataset.fields)
    for number, line in iter_text_lines(path):
        if isinstance(line, BadRecord):
            yield line
            continue
        if not line.strip():
            continue
        try:
            source = json.loads(line)
        except json.JSONDecodeError as error:
            yield BadRecord(path, number, "", f"malformed JSON ({error.msg} at column {error.colno})",
                            "correct the JSON on that line or remove the line")
            continue
        except RecursionError:
            yield BadRecord(path, number, "", TOO_DEEP_PROBLEM, TOO_DEEP_FIX)
            continue
        yield mapper(source, path, number)


def read_json_array(path: Path, dataset: DatasetSpec) -> Iterator[Item]:
    """One item per element of a top-level JSON array."""
    mapper = FieldMapper(dataset.fields)
    for index, source, line in iter_top_level(path, read_json_text(path), "["):
        if source is TOO_DEEP:
            yield BadRecord(path, line, f"element [{index}]", TOO_DEEP_PROBLEM, TOO_DEEP_FIX)
            continue
        yield mapper(source, path, line, f"element [{index}]")


def csv_delimiter(dataset: DatasetSpec, path: Path) -> str:
    return dataset.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")


def missing_columns(header: list[str], mapper: FieldMapper) -> dict[str, str]:
    """Required columns the header lacks, each with the spec key that needs it."""
    return {name: key for name, key in mapper.required_columns().items() if name not in header}


def header_problem(path: Path, header: list[str], missing: dict[str, str]) -> str:
    columns = ", ".join(f"{name!r} ({key})" for name, key in missing.items())
    return (f"{path}:1: the CSV header lacks the column(s) {columns}; it has {', '.join(map(repr, header))}. "
            "Fix: rename the columns in the file or change dataset.fields (and dataset.delimiter for TSV).")


def read_csv(path: Path, dataset: DatasetSpec) -> Iterator[Item]:
    """One item per row after the header; quoted fields may span lines."""
    mapper = FieldMapper(dataset.fields)
    bad_lines: dict[int, str] = {}
    reader = csv.reader(_lines_for_csv(path, bad_lines), delimiter=csv_delimiter(dataset, path), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: the file is empty (no header row). Fix: write a header row of column names.")
        missing = missing_columns(header, mapper)
        if missing:
            raise DatasetError(header_problem(path, header, missing))
        previous = reader.line_num
        for row in reader:
            first, last = previous + 1, reader.line_num
            previous = last
            if not row:
                continue
            undecodable = [n for n in range(first, last + 1) if n in bad_lines]
            if undecodable:
                yield BadRecord(path, undecodable[0], "", bad_lines[undecodable[0]], REENCODE_FIX)
            elif len(row) != len(header):
                yield BadRecord(path, first, "", f"the row has {len(row)} fields but the header has {len(header)}",
                                "quote fields that contain the delimiter, or correct the row")
            else:
                yield mapper(dict(zip(header, row)), path, first)
    except csv.Error as error:
        raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({error}). "
                           "Fix: close the quoted field or quote it correctly.") from None


def read_csv_header(path: Path, dataset: DatasetSpec) -> list[str]:
    """The header row alone (for checks before any job starts)."""
    reader = csv.reader(_lines_for_csv(path, {}), delimiter=csv_delimiter(dataset, path))
    return next(reader, [])


def _lines_for_csv(path: Path, bad_lines: dict[int, str]) -> Iterator[str]:
    """Lines for the csv module; an undecodable line is noted (its row is reported) and kept in place."""
    for number, raw in iter_byte_lines(path):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            bad_lines[number] = undecodable(raw, error)
            yield raw.decode("utf-8", errors="replace")


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
