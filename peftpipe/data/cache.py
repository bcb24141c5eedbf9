"""A shared directory of prepared datasets, keyed by what they were made from.

``<cache_dir>/<key>/`` holds ``train/validation/test.jsonl`` and ``stats.json``. The key is a
sha256 over the input files' bytes, the conversion options and the seed, so an unchanged
dataset is prepared once however many runs use it. An entry appears by an atomic rename once it
is complete, and is used only after each file's sha256 matches its stats.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftpipe.data.convert import Sources
from peftpipe.hashing import sha256_file
from peftpipe.spec import DatasetSpec

# Bump when the same inputs and options would convert to different records.
CONVERTER_VERSION = 3  # 3: splits by record content (stable as data grows)
# Spec keys that do not change the prepared files (paths are replaced by the files' content).
NOT_IN_KEY: dict[str, Any] = {
    "path": True, "train": True, "validation": True, "test": True, "cache": True, "cache_dir": True,
    "prompt_template": True, "pubmedqa": {"ground_truth"},
}


def input_digests(sources: Sources) -> dict[str, dict[str, str]]:
    """Each input file by role, with its sha256."""
    return {role: {"file": str(path), "sha256": sha256_file(path)} for role, path in sources.files().items()}


def cache_key(dataset: DatasetSpec, digests: dict[str, dict[str, str]], seed: int) -> str:
    payload = {
        "converter": CONVERTER_VERSION,
        "options": dataset.model_dump(mode="json", exclude=NOT_IN_KEY),
        "seed": seed,
        "inputs": {role: digest["sha256"] for role, digest in digests.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def find_entry(cache_dir: Path, key: str) -> Path | None:
    """The complete, intact entry for ``key``; a damaged one is removed (and then rebuilt)."""
    entry = cache_dir / key
    if not entry.is_dir():
        return None
    try:
        files = json.loads((entry / "stats.json").read_text(encoding="utf-8"))["files"]
        intact = all(sha256_file(entry / name) == info["sha256"] for name, info in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        intact = False
    if intact:
        return entry
    shutil.rmtree(entry, ignore_errors=True)
    return None


def store_entry(cache_dir: Path, key: str, build: Callable[[Path], Any]) -> Path:
    """Run ``build(directory)`` in a staging directory and rename it into place as the entry."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = cache_dir / key
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=cache_dir))
    try:
        build(staging)
        try:
            os.rename(staging, entry)
        except OSError:
            if not entry.is_dir():
                raise
            # Another run stored the same key first; its entry is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


def place_files(entry: Path, out_dir: Path, names: list[str]) -> None:
    """Hard-link (or, across file systems, copy) an entry's files into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        staged = out_dir / f".{name}.partial"
        staged.unlink(missing_ok=True)
        try:
            os.link(entry / name, staged)
        except OSError:
            shutil.copyfile(entry / name, staged)
        os.replace(staged, out_dir / name)
