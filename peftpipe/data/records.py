"""What every reader yields, and the byte-level reading they share.

Readers yield one item per source record: a converted :data:`Record`, a :class:`BadRecord`
(which the caller turns into an error or a listed skip, by ``dataset.on_bad_record``) or an
:class:`Omitted` (left out by a documented policy, such as unanswerable SQuAD v2.0 questions,
and counted). Nothing is dropped without one of the three.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftpipe.hashing import sha256_file

Record = dict[str, Any]

REENCODE_FIX = "re-encode the file as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8)"


class DatasetError(ValueError):
    """Input data that cannot be converted; the message names the file, the place and the fix."""


@dataclass(frozen=True)
class BadRecord:
    """A source record that cannot become a NeMo record, and why."""

    file: Path
    line: int | None
    where: str
    problem: str
    fix: str

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        where = f": {self.where}" if self.where else ""
        return f"{place}{where}: {self.problem}. Fix: {self.fix}."

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.file), "line": self.line, "where": self.where, "reason": self.problem}


@dataclass(frozen=True)
class Omitted:
    """A source record left out on purpose (``reason`` is counted in stats.json)."""

    reason: str


Item = Record | BadRecord | Omitted


def iter_byte_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines of a file, a UTF-8 byte order mark removed."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            yield number, raw


def undecodable(raw: bytes, error: UnicodeDecodeError) -> str:
    return f"not UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line)"


def iter_text_lines(path: Path) -> Iterator[tuple[int, str | BadRecord]]:
    """Numbered lines of a UTF-8 file, decoded one at a time.

    Decoding per line keeps memory flat for multi-GB files and lets a stray non-UTF-8 byte
    cost one line (reported) instead of the whole file.
    """
    for number, raw in iter_byte_lines(path):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield number, BadRecord(path, number, "", undecodable(raw, error), REENCODE_FIX)


def read_json_text(path: Path) -> str:
    """The whole of a JSON document as text; a non-UTF-8 byte is an error naming its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DatasetError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[error.start]:02x} at byte offset {error.start}). Fix: {REENCODE_FIX}."
        ) from None


def malformed_json(path: Path, error: json.JSONDecodeError) -> DatasetError:
    return DatasetError(
        f"{path}:{error.lineno}: malformed JSON ({error.msg} at column {error.colno}). "
        "Fix: correct the JSON at that line and column."
    )


# Nesting deeper than Python's JSON parser (which recurses) can take: a hostile or broken record.
TOO_DEEP_PROBLEM = "the JSON is nested deeper than the parser allows (Python's recursion limit)"
TOO_DEEP_FIX = "flatten the record or remove it"
# What iter_top_level yields for a member nested too deeply to parse: the reader makes it a bad record.
TOO_DEEP = object()


def load_json_document(path: Path) -> Any:
    """Parse a whole JSON file (SQuAD-style documents are single objects, read at once)."""
    text = read_json_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise malformed_json(path, error) from None
    except RecursionError:
        raise DatasetError(f"{path}: {TOO_DEEP_PROBLEM}. Fix: {TOO_DEEP_FIX}.") from None


_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


def iter_top_level(path: Path, text: str, opening: str) -> Iterator[tuple[str | int, Any, int]]:
    """(key or index, value, line) of each member of a top-level JSON object (``{``) or array (``[``).

    The line lets an error about one PubMedQA record or one array element point into the file.
    """
    closing = "}" if opening == "{" else "]"
    lines = _LineCounter(text)
    position = _skip_whitespace(text, 0)
    if not text.startswith(opening, position):
        kind = "an object" if opening == "{" else "an array"
        raise DatasetError(f"{path}:{lines.at(position)}: expected {kind} at the top level. "
                           "Fix: check that the file matches the format.")
    position, index = position + 1, 0
    try:
        while True:
            position = _skip_whitespace(text, position)
            if text.startswith(closing, position) and index == 0:
                break
            if opening == "{":
                if not text.startswith('"', position):
                    raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, position)
                key, position = _DECODER.raw_decode(text, position)
                position = _skip_whitespace(text, position)
                if not text.startswith(":", position):
                    raise json.JSONDecodeError("Expecting ':' delimiter", text, position)
                position = _skip_whitespace(text, position + 1)
            else:
                key = index
            try:
                value, end = _DECODER.raw_decode(text, position)
            except RecursionError:
                value, end = TOO_DEEP, _nested_value_end(text, position)
            yield key, value, lines.at(position)
            position, index = _skip_whitespace(text, end), index + 1
            if text.startswith(",", position):
                position += 1
            elif text.startswith(closing, position):
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
        if _skip_whitespace(text, position + 1) != len(text):
            raise json.JSONDecodeError("Extra data", text, _skip_whitespace(text, position + 1))
    except json.JSONDecodeError as error:
        raise malformed_json(path, error) from None


class _LineCounter:
    """Line numbers of increasing positions in one text, counted incrementally."""

    def __init__(self, text: str):
        self.text, self.position, self.line = text, 0, 1

    def at(self, position: int) -> int:
        self.line += self.text.count("\n", self.position, position)
        self.position = position
        return self.line


def _nested_value_end(text: str, position: int) -> int:
    """The end of the array or object starting at ``position``, found by counting brackets outside strings
    (no recursion, so any depth)."""
    depth, index, length = 0, position, len(text)
    while index < length:
        char = text[index]
        if char == '"':
            index += 1
            while index < length and text[index] != '"':
                index += 2 if text[index] == "\\" else 1
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    raise json.JSONDecodeError("Unterminated array or object", text, position)


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position



def digest_files(paths: Iterable[Path]) -> tuple[str, dict[str, str]]:
    """The fingerprint of ``paths`` (sha256 over their names and bytes: equal fingerprints mean equal
    data) and each file's own sha256, in one read."""
    combined, each = hashlib.sha256(), {}
    for path in sorted(paths, key=lambda p: p.name):
        own = hashlib.sha256()
        combined.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                combined.update(chunk)
                own.update(chunk)
        each[path.name] = own.hexdigest()
    return combined.hexdigest(), each
