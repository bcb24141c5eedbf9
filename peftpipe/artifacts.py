"""Artifact storage for a run: ``<store>/<run_id>/...`` plus a manifest written last.

A run whose ``manifest.json`` exists is complete: every object it lists is present with the
size and sha256 recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


class ArtifactStore(Protocol):
    def put_file(self, run_id: str, key: str, source: Path) -> StoredObject: ...

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str: ...

    def url(self, run_id: str, key: str = "") -> str: ...


class FileArtifactStore:
    """A directory store (``file://DIR``): the embedded default and shared cluster file systems."""

    def __init__(self, root: Path):
        self.root = root

    def put_file(self, run_id: str, key: str, source: Path) -> StoredObject:
        target = self.root / run_id / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        return StoredObject(key, target.stat().st_size, sha256_file(target))

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        target = self.root / run_id / MANIFEST
        partial = target.with_name(f".{MANIFEST}.partial")
        partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        os.replace(partial, target)
        return self.url(run_id, MANIFEST)

    def url(self, run_id: str, key: str = "") -> str:
        return (self.root / run_id / key).resolve().as_uri()


def open_store(url: str) -> ArtifactStore:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileArtifactStore(Path(parts.netloc + parts.path).expanduser())
    raise ValueError(f"artifact store {url!r}: unsupported scheme {parts.scheme!r}")


def publish_directory(store: ArtifactStore, run_id: str, files: dict[str, Path], metadata: dict[str, Any]) -> dict:
    """Upload ``files`` (key -> local path), then the manifest listing each with size and sha256."""
    objects = [store.put_file(run_id, key, path) for key, path in sorted(files.items())]
    manifest = {
        **metadata,
        "run_id": run_id,
        "objects": [{"key": o.key, "size": o.size, "sha256": o.sha256} for o in objects],
    }
    manifest["manifest_url"] = store.write_manifest(run_id, manifest)
    return manifest
