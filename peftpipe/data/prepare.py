"""Turn a dataset into train / validation / test JSONL with stats.json and a fingerprint.

Memory stays bounded however large the input: records stream from the reader to the output
files; a record's split is a function of its own content and the seed
(:mod:`peftpipe.data.fingerprints`), so appending records never moves one to another split;
de-duplication keeps a 16-byte digest per distinct (input, output) pair, never the pair itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftpipe.data.cache import cache_key, find_entry, input_digests, place_files, store_entry
from peftpipe.data.fingerprints import StableSplitter
from peftpipe.data.convert import READ_ORDER, SPLITS, Sources, read_items, resolve_sources
from peftpipe.data.records import BadRecord, DatasetError, Omitted, digest_files
from peftpipe.spec import DatasetSpec, LoadedSpec, RunSpec

STATS_FILE = "stats.json"


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset directory and the figures the run records (``stats.json`` has them all)."""

    directory: Path
    counts: dict[str, int]
    duplicates_removed: int
    fingerprint: str
    skipped: int = 0
    cache_key: str | None = None
    reused: bool = False

    def file(self, split: str) -> Path:
        return self.directory / f"{split}.jsonl"


class DuplicateFilter:
    """Remembers a 16-byte digest of each (input, output) pair seen."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def is_duplicate(self, record: dict[str, Any]) -> bool:
        text, answer = record["input"], record["output"]
        key = hashlib.blake2b(f"{len(text)}:{text}{answer}".encode(), digest_size=16).digest()
        if key in self.seen:
            return True
        self.seen.add(key)
        return False


def serialize(record: dict[str, Any]) -> str:
    """One JSONL line; non-ASCII text stays readable (JSQuAD), line separators stay escaped."""
    line = json.dumps(record, ensure_ascii=False)
    if "\u2028" in line or "\u2029" in line:
        # Unescaped, these split the line for tools that use str.splitlines.
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return line + "\n"


def convert_dataset(dataset: DatasetSpec, sources: Sources, out_dir: Path, seed: int,
                    digests: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Write ``{train,validation,test}.jsonl`` and ``stats.json`` into ``out_dir``; return the stats.

    Files are built in a sibling temporary directory and moved in at the end, stats.json last,
    so ``out_dir`` never holds a half-written dataset.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        stats = _convert(dataset, sources, build, seed, digests or input_digests(sources))
        for name in [f"{split}.jsonl" for split in SPLITS] + [STATS_FILE]:
            os.replace(build / name, out_dir / name)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return stats


def _convert(dataset: DatasetSpec, sources: Sources, out_dir: Path, seed: int,
             digests: dict[str, dict[str, str]]) -> dict[str, Any]:
    counts = dict.fromkeys(SPLITS, 0)
    duplicates: Counter[str] = Counter()
    omitted: Counter[str] = Counter()
    skipped: list[dict[str, Any]] = []
    read = 0
    filter_ = DuplicateFilter()
    with ExitStack() as stack:
        handles = {s: stack.enter_context((out_dir / f"{s}.jsonl").open("w", encoding="utf-8")) for s in SPLITS}

        def write(pairs: list[tuple[str, str]]) -> None:
            for split, line in pairs:
                handles[split].write(line)
                counts[split] += 1

        def records(path: Path, split: str | None):
            nonlocal read
            for item in read_items(dataset, path, split, sources):
                read += 1
                if isinstance(item, BadRecord):
                    if dataset.on_bad_record == "error":
                        raise DatasetError(str(item))
                    skipped.append(item.as_dict())
                elif isinstance(item, Omitted):
                    omitted[item.reason] += 1
                elif filter_.is_duplicate(item):
                    duplicates[split or "path"] += 1
                else:
                    yield item, serialize(item)

        if sources.single is not None:
            splitter = StableSplitter(dataset.split.validation, dataset.split.test, seed)
            for record, line in records(sources.single, None):
                write(splitter.add(record, line))
            write(splitter.finish())
        else:
            for split in READ_ORDER:
                if split in sources.splits:
                    write([(split, line) for _, line in records(sources.splits[split], split)])
    _check_not_empty(dataset, counts, sources, skipped, sum(duplicates.values()))
    digest, shas = digest_files(out_dir / f"{s}.jsonl" for s in SPLITS)
    files = {f"{s}.jsonl": {"records": counts[s], "sha256": shas[f"{s}.jsonl"]} for s in SPLITS}
    stats = {
        "format": dataset.format,
        "inputs": digests,
        "counts": counts,
        "records_read": read,
        "duplicates_removed": sum(duplicates.values()),
        "duplicates_by_split": dict(duplicates),
        "omitted": dict(omitted),
        "skipped_count": len(skipped),
        "skipped": skipped,
        "files": files,
        "fingerprint": digest,
    }
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return stats


def _check_not_empty(dataset: DatasetSpec, counts: dict[str, int], sources: Sources,
                     skipped: list[dict[str, Any]], duplicates: int) -> None:
    held_out_test = "test" in sources.splits or (sources.single is not None and dataset.split.test > 0)
    empty = "train" if counts["train"] == 0 else "test" if counts["test"] == 0 and held_out_test else None
    if empty is None:
        return
    why = f"{len(skipped)} bad records skipped, {duplicates} duplicates removed"
    if skipped:
        first = skipped[0]
        why += f"; first skipped: {first['file']}:{first['line']}: {first['reason']}"
    fix = "add data or lower dataset.split" if empty == "train" else "check the test file"
    raise DatasetError(f"dataset: no {empty} records are left ({why}). Fix: {fix}.")


def default_cache_dir(spec: RunSpec) -> Path:
    """``dataset.cache_dir``, else ``<workdir>/data-cache``; relative to the working directory."""
    return Path(spec.dataset.cache_dir or Path(spec.workdir) / "data-cache").expanduser().resolve()


def prepare_dataset(loaded: LoadedSpec, out_dir: Path, cache_dir: Path | None = None) -> PreparedData:
    """Convert the spec's dataset into ``out_dir``, reusing a cached copy when one matches.

    The cache key is a sha256 over the input files' bytes, the conversion options and the seed;
    a hit is verified against the sha256 of each cached file before it is used.
    """
    dataset, seed = loaded.spec.dataset, loaded.spec.train.seed
    sources = resolve_sources(dataset, loaded.resolve)
    if cache_dir is None or not dataset.cache:
        return _prepared(out_dir, convert_dataset(dataset, sources, out_dir, seed))
    digests = input_digests(sources)
    key = cache_key(dataset, digests, seed)
    entry = find_entry(cache_dir, key)
    reused = entry is not None
    if entry is None:
        entry = store_entry(cache_dir, key, lambda build: convert_dataset(dataset, sources, build, seed,
                                                                          digests=digests))
    stats = json.loads((entry / STATS_FILE).read_text(encoding="utf-8"))
    place_files(entry, out_dir, [f"{split}.jsonl" for split in SPLITS])
    stats["cache"] = {"key": key, "entry": str(entry), "reused": reused}
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return _prepared(out_dir, stats, key, reused)


def _prepared(out_dir: Path, stats: dict[str, Any], key: str | None = None, reused: bool = False) -> PreparedData:
    return PreparedData(out_dir, stats["counts"], stats["duplicates_removed"], stats["fingerprint"],
                        stats["skipped_count"], key, reused)

