"""Which files a dataset spec names, and which reader turns each into items."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from peftpipe.data.custom import read_csv, read_json_array, read_jsonl
from peftpipe.data.pubmedqa import ground_truth_file, read_pubmedqa
from peftpipe.data.records import Item
from peftpipe.data.squad import read_squad
from peftpipe.spec import SQUAD_FORMATS, DatasetSpec

SPLITS = ("train", "validation", "test")
# Given splits are read test first: a pair that is also in train is then removed from train,
# never from the data a model is judged on.
READ_ORDER = ("test", "validation", "train")


@dataclass(frozen=True)
class Sources:
    """A dataset's input files: one file to split (``single``) or given ``splits``."""

    single: Path | None = None
    splits: dict[str, Path] = field(default_factory=dict)
    ground_truth: Path | None = None

    def files(self) -> dict[str, Path]:
        """Every input file by role; these are what the cache key hashes."""
        named = {"path": self.single} if self.single is not None else dict(self.splits)
        if self.ground_truth is not None:
            named["ground_truth"] = self.ground_truth
        return named


def resolve_sources(dataset: DatasetSpec, resolve: Callable[[str], Path]) -> Sources:
    if dataset.path is not None:
        return Sources(single=resolve(dataset.path))
    splits = {split: resolve(getattr(dataset, split)) for split in SPLITS if getattr(dataset, split)}
    truth = None
    if dataset.format == "pubmedqa" and "test" in splits:
        truth = ground_truth_file(dataset, splits["test"], resolve)
    return Sources(splits=splits, ground_truth=truth)


def read_items(dataset: DatasetSpec, path: Path, split: str | None, sources: Sources) -> Iterator[Item]:
    """The items of one input file; ``split`` is its given split, None for a file to be split."""
    if dataset.format in SQUAD_FORMATS:
        return read_squad(path, dataset)
    if dataset.format == "pubmedqa":
        is_test = split == "test"
        return read_pubmedqa(path, dataset, is_test, sources.ground_truth if is_test else None)
    if dataset.format == "json":
        return read_json_array(path, dataset)
    if dataset.format == "csv":
        return read_csv(path, dataset)
    return read_jsonl(path, dataset)
