"""Splitting, de-duplication, fingerprint and cache of prepared data, and memory that does not grow with the file."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path
from typing import Any

from peftpipe import stages
from peftpipe.data.convert import SPLITS, Sources
from peftpipe.data.prepare import convert_dataset
from peftpipe.paths import RunPaths
from peftpipe.spec import DatasetSpec
from peftpipe.validation import load_spec
from tests.conftest import write_spec


def write_records(path: Path, count: int, filler: str = "", start: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for n in range(start, start + count):
            handle.write(json.dumps({"input": f"question {n}{filler}", "output": f"answer {n}", "n": n}) + "\n")
    return path


def split_numbers(out: Path) -> dict[str, list[int]]:
    return {split: [json.loads(line)["n"] for line in (out / f"{split}.jsonl").read_text().splitlines()]
            for split in SPLITS}


def convert_file(path: Path, out: Path, seed: int = 1, **options: Any) -> dict[str, Any]:
    dataset = DatasetSpec(format="jsonl", path=str(path), **options)
    return convert_dataset(dataset, Sources(single=path), out, seed)


def test_seeded_split_follows_the_ratio_and_is_reproducible(tmp_path: Path) -> None:
    source = write_records(tmp_path / "data.jsonl", 1003)
    split = {"validation": 0.1, "test": 0.2}
    stats = convert_file(source, tmp_path / "a", seed=7, split=split)
    counts = stats["counts"]
    # By content hash: each record is an independent draw, so the counts follow the ratio
    # within a few standard deviations (sqrt(1003 x 0.2 x 0.8) = 12.7 for test).
    assert abs(counts["test"] - 200.6) < 45 and abs(counts["validation"] - 100.3) < 35
    first = split_numbers(tmp_path / "a")
    assert sorted(first["train"] + first["validation"] + first["test"]) == list(range(1003))
    convert_file(source, tmp_path / "b", seed=7, split=split)
    assert split_numbers(tmp_path / "b") == first
    convert_file(source, tmp_path / "c", seed=8, split=split)
    assert set(split_numbers(tmp_path / "c")["test"]) != set(first["test"])
    # Held-out records are drawn from the whole file, not from its start.
    assert max(first["test"]) > 900 and min(first["test"]) < 100


def test_appended_records_never_move_an_existing_record_to_another_split(tmp_path: Path) -> None:
    split = {"validation": 0.1, "test": 0.15}
    old = write_records(tmp_path / "old.jsonl", 60)
    convert_file(old, tmp_path / "before", split=split)
    before = split_numbers(tmp_path / "before")
    grown = tmp_path / "grown.jsonl"
    grown.write_text(old.read_text() + write_records(tmp_path / "more.jsonl", 140, start=60).read_text())
    convert_file(grown, tmp_path / "after", split=split)
    after = split_numbers(tmp_path / "after")
    for name in SPLITS:
        assert set(before[name]) <= set(after[name]), name
    assert not set(before["train"]) & set(after["test"])
    assert set(after["test"]) - set(before["test"])  # new records reach the test split too


def test_a_record_keeps_its_split_whatever_its_whitespace_and_metadata(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl"
    spaced = tmp_path / "spaced.jsonl"
    rows = [{"input": f"question {n}  about\tthings", "output": f"answer {n}"} for n in range(40)]
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spaced.write_text("".join(json.dumps({"input": " ".join(r["input"].split()), "output": r["output"] + " ",
                                          "id": n}) + "\n" for n, r in enumerate(rows)))
    convert_file(plain, tmp_path / "a", split={"validation": 0.2, "test": 0.2})
    convert_file(spaced, tmp_path / "b", split={"validation": 0.2, "test": 0.2})
    for name in SPLITS:
        a = [" ".join(json.loads(x)["input"].split()) for x in (tmp_path / "a" / f"{name}.jsonl").read_text().splitlines()]
        b = [json.loads(x)["input"] for x in (tmp_path / "b" / f"{name}.jsonl").read_text().splitlines()]
        assert a == b, name


def test_a_tiny_dataset_still_gets_one_record_per_held_out_split(tmp_path: Path) -> None:
    source = write_records(tmp_path / "data.jsonl", 5)
    stats = convert_file(source, tmp_path / "out", split={"validation": 0.05, "test": 0.05})
    assert stats["counts"] == {"train": 3, "validation": 1, "test": 1}
    before = split_numbers(tmp_path / "out")
    # Growing it keeps the promise: what trained before never lands in test.
    grown = write_records(tmp_path / "grown.jsonl", 12)
    convert_file(grown, tmp_path / "grown", split={"validation": 0.05, "test": 0.05})
    assert not set(before["train"]) & set(split_numbers(tmp_path / "grown")["test"])


def test_duplicates_across_given_splits_leave_train_not_test(tmp_path: Path) -> None:
    def pair(n: int, tag: str) -> str:
        return json.dumps({"input": f"question {n}", "output": f"answer {n}", "from": tag}) + "\n"

    (tmp_path / "train.jsonl").write_text(pair(1, "train") + pair(2, "train") + pair(2, "train-again") + pair(3, "train"))
    (tmp_path / "validation.jsonl").write_text(pair(4, "validation"))
    (tmp_path / "test.jsonl").write_text(pair(3, "test") + pair(5, "test"))
    dataset = DatasetSpec(format="jsonl", train="train.jsonl", validation="validation.jsonl", test="test.jsonl")
    sources = Sources(splits={s: tmp_path / f"{s}.jsonl" for s in SPLITS})
    stats = convert_dataset(dataset, sources, tmp_path / "out", seed=1)
    assert stats["duplicates_removed"] == 2
    assert stats["duplicates_by_split"] == {"train": 2}
    written = {s: [json.loads(line)["from"] for line in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()]
               for s in SPLITS}
    assert written == {"train": ["train", "train"], "validation": ["validation"], "test": ["test", "test"]}


def test_fingerprint_is_the_sha256_of_the_written_files(tmp_path: Path) -> None:
    source = write_records(tmp_path / "data.jsonl", 50)
    stats = convert_file(source, tmp_path / "out")
    digest = hashlib.sha256()
    for name in ("test.jsonl", "train.jsonl", "validation.jsonl"):
        digest.update(name.encode() + b"\0" + (tmp_path / "out" / name).read_bytes())
    assert stats["fingerprint"] == digest.hexdigest()
    assert stats["files"]["train.jsonl"]["sha256"] == hashlib.sha256((tmp_path / "out/train.jsonl").read_bytes()).hexdigest()
    assert stats["inputs"] == {"path": {"file": str(source), "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}}


def prepare(spec: Path, run: str, overrides: dict[str, Any] | None = None):
    loaded = load_spec(spec, overrides)
    return stages.prepare_stage(loaded, RunPaths(Path(loaded.spec.workdir) / run))


def example_spec(tmp_path: Path, changes: dict[str, Any] | None = None) -> Path:
    return write_spec(tmp_path / "spec", {"workdir": str(tmp_path / "runs"), **(changes or {})})


def test_an_unchanged_dataset_is_prepared_once_and_reused(tmp_path: Path) -> None:
    spec = example_spec(tmp_path)
    first = prepare(spec, "run-1")
    second = prepare(spec, "run-2")
    assert (first.reused, second.reused) == (False, True)
    assert second.cache_key == first.cache_key and second.fingerprint == first.fingerprint
    for split in SPLITS:
        assert second.file(split).read_bytes() == first.file(split).read_bytes()
    assert [p.name for p in (tmp_path / "runs" / "data-cache").iterdir()] == [first.cache_key]
    stats = json.loads((second.directory / "stats.json").read_text())
    assert stats["cache"] == {"key": first.cache_key, "reused": True,
                              "entry": str(tmp_path / "runs" / "data-cache" / first.cache_key)}


def test_changed_data_or_options_make_a_new_key(tmp_path: Path) -> None:
    spec = example_spec(tmp_path)
    first = prepare(spec, "run-1")
    data = tmp_path / "spec" / "squad_tiny.json"
    document = json.loads(data.read_text())
    document["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "a changed answer"
    data.write_text(json.dumps(document))
    changed_data = prepare(spec, "run-2")
    assert changed_data.cache_key != first.cache_key and not changed_data.reused
    assert changed_data.fingerprint != first.fingerprint
    changed_options = prepare(spec, "run-3", {"dataset.input_template": "Q: {question}\nC: {context}"})
    assert changed_options.cache_key not in (first.cache_key, changed_data.cache_key)
    prompt_only = prepare(spec, "run-4", {"dataset.prompt_template": "{input} {output}"})
    assert prompt_only.reused and prompt_only.cache_key == changed_data.cache_key


def test_a_damaged_cache_entry_is_rebuilt_not_used(tmp_path: Path) -> None:
    spec = example_spec(tmp_path)
    first = prepare(spec, "run-1")
    cached = tmp_path / "runs" / "data-cache" / first.cache_key / "train.jsonl"
    cached.unlink()
    cached.write_text('{"input": "tampered", "output": "x"}\n')
    again = prepare(spec, "run-2")
    assert not again.reused
    assert again.fingerprint == first.fingerprint
    assert b"tampered" not in again.file("train").read_bytes()


def test_cache_can_be_switched_off(tmp_path: Path) -> None:
    prepared = prepare(example_spec(tmp_path, {"dataset.cache": False}), "run-1")
    assert prepared.cache_key is None and not prepared.reused
    assert not (tmp_path / "runs" / "data-cache").exists()


def peak_traced_bytes(source: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        convert_file(source, out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Doubling a JSONL file (20 MB -> 40 MB) adds only a 16-byte digest per record, not the records."""
    filler = " lorem ipsum" * 340
    small = write_records(tmp_path / "small.jsonl", 5_000, filler)
    large = write_records(tmp_path / "large.jsonl", 10_000, filler)
    growth = peak_traced_bytes(large, tmp_path / "out-large") - peak_traced_bytes(small, tmp_path / "out-small")
    added_bytes = large.stat().st_size - small.stat().st_size
    assert growth < added_bytes / 10, f"peak grew by {growth} bytes for {added_bytes} more bytes of input"
