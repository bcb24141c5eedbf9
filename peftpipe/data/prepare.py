"""Turn a spec's dataset into train / validation / test JSONL with stats and a fingerprint."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from peftpipe.data.records import Record, fingerprint, read_jsonl, write_jsonl
from peftpipe.data.squad import read_squad
from peftpipe.spec import LoadedSpec

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class PreparedData:
    directory: Path
    counts: dict[str, int]
    duplicates_removed: int
    fingerprint: str

    def file(self, split: str) -> Path:
        return self.directory / f"{split}.jsonl"


def _read(loaded: LoadedSpec, relative: str) -> list[Record]:
    data = loaded.spec.dataset
    path = loaded.resolve(relative)
    if data.format == "squad":
        return list(read_squad(path, data.input_template))
    return list(read_jsonl(path))


def split_records(records: list[Record], validation: float, test: float, seed: int) -> dict[str, list[Record]]:
    """A seeded shuffle cut by ratio; at least one test record when any are asked for."""
    shuffled = records[:]
    random.Random(seed).shuffle(shuffled)
    n_test = max(1, round(len(shuffled) * test)) if test > 0 else 0
    n_val = max(1, round(len(shuffled) * validation)) if validation > 0 else 0
    return {
        "test": shuffled[:n_test],
        "validation": shuffled[n_test : n_test + n_val],
        "train": shuffled[n_test + n_val :],
    }


def deduplicate(splits: dict[str, list[Record]]) -> tuple[dict[str, list[Record]], int]:
    """Drop repeated (input, output) pairs; a pair in test or validation is removed from train."""
    seen: set[tuple[str, str]] = set()
    removed = 0
    kept: dict[str, list[Record]] = {}
    for split in ("test", "validation", "train"):
        kept[split] = []
        for record in splits[split]:
            key = (record["input"], record["output"])
            if key in seen:
                removed += 1
                continue
            seen.add(key)
            kept[split].append(record)
    return kept, removed


def prepare_dataset(loaded: LoadedSpec, out_dir: Path) -> PreparedData:
    data = loaded.spec.dataset
    if data.path is not None:
        splits = split_records(_read(loaded, data.path), data.split.validation, data.split.test, loaded.spec.train.seed)
    else:
        splits = {split: _read(loaded, getattr(data, split)) if getattr(data, split) else [] for split in SPLITS}
    splits, removed = deduplicate(splits)
    if not splits["train"]:
        raise ValueError("dataset: no training records left after splitting. Fix: add data or lower dataset.split.")
    counts = {split: write_jsonl(splits[split], out_dir / f"{split}.jsonl") for split in SPLITS}
    digest = fingerprint(out_dir / f"{split}.jsonl" for split in SPLITS)
    prepared = PreparedData(out_dir, counts, removed, digest)
    stats = {"counts": counts, "duplicates_removed": removed, "fingerprint": digest}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return prepared
