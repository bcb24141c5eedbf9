"""Artifact storage for a run: ``<store>/<run_id>/...`` plus a manifest written last.

A run whose ``manifest.json`` exists is complete: every object it lists is present with the
size and sha256 recorded. Two backends share one interface: ``file://DIR`` (below) and
``s3://bucket/prefix`` (:mod:`peftpipe.artifacts_s3`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peftpipe.hashing import sha256_file
from peftpipe.manifests import checked_manifest
from peftpipe.safe_names import check_run_id, check_store_key, check_store_prefix, inside, is_run_id


MANIFEST = "manifest.json"
# Top-level names starting with this hold the store's own records (promoted pointers); run ids
# cannot start with it, so neither collides nor shows up as a run.
RESERVED = "_"
# (key, bytes done, total bytes) while a large object moves.
Progress = Callable[[str, int, int], None]


class ArtifactStoreError(RuntimeError):
    """The store refused an operation; the message says what to check and never holds a secret."""


class StoreUnavailable(ArtifactStoreError):
    """The store did not answer (connection errors, 5xx) even after retries: worth trying again later."""


class RunIncomplete(ArtifactStoreError):
    """The run has no manifest: it was never published, or its publish has not finished."""


class ChecksumMismatch(ArtifactStoreError):
    """Downloaded bytes differ from the manifest's size or sha256; nothing was written to the destination."""


def checked_location(run_id: str, key: str = "") -> None:
    """Refuse a run id or key that could leave the store's run (every store method calls this first).

    The store's own records (``_promoted``) pass here; methods about runs (manifests) take run ids only.
    """
    check_store_prefix(run_id)
    if key:
        check_store_key(run_id, key)


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    transferred: bool = True  # False: an identical object was already there


class ArtifactStore(Protocol):
    def check(self) -> None:
        """Fail early, with the reason, if the store cannot be written with these settings."""

    def put_file(self, run_id: str, key: str, source: Path) -> StoredObject: ...

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str: ...

    def read_manifest(self, run_id: str) -> dict[str, Any] | None: ...

    def remove_manifest(self, run_id: str) -> None:
        """Make the run incomplete again (nothing happens when it has no manifest)."""

    def list_runs(self) -> list[str]: ...

    def read_bytes(self, run_id: str, key: str) -> bytes | None:
        """A small object's content, or None if there is no such object."""

    def download(self, run_id: str, key: str, dest: Path) -> None:
        """Copy one object to ``dest`` as stored; :func:`restore` verifies it."""

    def url(self, run_id: str, key: str = "") -> str: ...


class FileArtifactStore:
    """A directory store (``file://DIR``): the embedded default and shared cluster file systems."""

    def __init__(self, root: Path):
        self.root = root

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def put_file(self, run_id: str, key: str, source: Path) -> StoredObject:
        checked_location(run_id, key)
        target = self.root / run_id / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        return StoredObject(key, target.stat().st_size, sha256_file(target))

    def write_manifest(self, run_id: str, manifest: dict[str, Any]) -> str:
        check_run_id(run_id)
        target = self.root / run_id / MANIFEST
        partial = target.with_name(f".{MANIFEST}.partial")
        partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        os.replace(partial, target)
        return self.url(run_id, MANIFEST)

    def read_manifest(self, run_id: str) -> dict[str, Any] | None:
        check_run_id(run_id)
        target = self.root / run_id / MANIFEST
        return checked_manifest(run_id, target.read_bytes(), self.url(run_id, MANIFEST)) if target.is_file() else None

    def remove_manifest(self, run_id: str) -> None:
        check_run_id(run_id)
        (self.root / run_id / MANIFEST).unlink(missing_ok=True)

    def list_runs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # A directory whose name is not a run id (someone else's, or a hostile one) is not a run.
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_run_id(p.name))

    def read_bytes(self, run_id: str, key: str) -> bytes | None:
        checked_location(run_id, key)
        target = self.root / run_id / key
        return target.read_bytes() if target.is_file() else None

    def download(self, run_id: str, key: str, dest: Path) -> None:
        checked_location(run_id, key)
        source = self.root / run_id / key
        if not source.is_file():
            raise ArtifactStoreError(f"{self.url(run_id, key)} is listed in the manifest but missing from the store.")
        shutil.copyfile(source, dest)

    def url(self, run_id: str, key: str = "") -> str:
        checked_location(run_id, key)
        return (self.root / run_id / key).resolve().as_uri()


@dataclass(frozen=True)
class Published:
    manifest: dict[str, Any]
    transferred: int  # objects sent; the others were already stored unchanged


def publish_directory(store: ArtifactStore, run_id: str, files: dict[str, Path], metadata: dict[str, Any]
                      ) -> Published:
    """Upload ``files`` (key -> local path), then the manifest listing each with size and sha256.

    Safe to repeat after a failure: objects already stored unchanged are not sent again, and
    the run becomes visible as complete only when the manifest lands. Re-publishing a complete
    run whose listed objects changed removes its manifest first, so that a publish cut short
    leaves an incomplete run, never a "complete" one whose objects fail their checksums.
    """
    store.check()
    previous = store.read_manifest(run_id)
    if previous is not None and _changes_listed_objects(previous, files):
        store.remove_manifest(run_id)
    objects = [store.put_file(run_id, key, path) for key, path in sorted(files.items())]
    manifest = {
        **metadata,
        "run_id": run_id,
        "objects": [{"key": o.key, "size": o.size, "sha256": o.sha256} for o in objects],
    }
    manifest["manifest_url"] = store.write_manifest(run_id, manifest)
    return Published(manifest, sum(o.transferred for o in objects))


def add_to_published_run(store: ArtifactStore, run_id: str, files: dict[str, Path], metadata: dict[str, Any]
                         ) -> Published:
    """Add ``files`` (e.g. an export) to a complete run: upload them, then rewrite its manifest listing them too.

    The objects already listed keep their entries; ``metadata`` is merged into the manifest. As with
    :func:`publish_directory`, replacing a listed object with other content removes the manifest first.
    """
    previous = store.read_manifest(run_id)
    if previous is None:
        raise RunIncomplete(f"run {run_id!r} has no {MANIFEST} at {store.url(run_id)}: it is not published.")
    if _changes_listed_objects(previous, files):
        store.remove_manifest(run_id)
    objects = [store.put_file(run_id, key, path) for key, path in sorted(files.items())]
    added = {o.key for o in objects}
    manifest = {**{k: v for k, v in previous.items() if k != "manifest_url"}, **metadata, "run_id": run_id}
    manifest["objects"] = [o for o in previous["objects"] if o["key"] not in added] + [
        {"key": o.key, "size": o.size, "sha256": o.sha256} for o in objects]
    manifest["manifest_url"] = store.write_manifest(run_id, manifest)
    return Published(manifest, sum(o.transferred for o in objects))


def _changes_listed_objects(manifest: dict[str, Any], files: dict[str, Path]) -> bool:
    listed = {o["key"]: (o["size"], o["sha256"]) for o in manifest.get("objects", [])}
    return any(key in listed and listed[key] != (path.stat().st_size, sha256_file(path))
               for key, path in files.items())


def restore(store: ArtifactStore, run_id: str, name: str, dest: Path) -> list[Path]:
    """Download object ``name`` (or every object under the prefix ``name/``) of a complete run.

    A single object lands at ``dest`` (or inside it if ``dest`` is a directory); a prefix lands
    under the directory ``dest``. Each file is checked against the manifest's size and sha256
    before it appears at its destination; a file already there with that sha256 is kept.
    """
    check_run_id(run_id)
    check_store_key(run_id, name.strip("/"))
    manifest = store.read_manifest(run_id)  # checked: every key is relative and stays below its run
    if manifest is None:
        raise RunIncomplete(f"run {run_id!r} has no {MANIFEST} at {store.url(run_id)}: it is not published"
                            " (or its publish has not finished); `peftpipe artifacts ls` lists complete runs.")
    objects = {o["key"]: o for o in manifest["objects"]}
    prefix = name.strip("/") + "/"
    if name in objects:
        target = dest / Path(name).name if dest.is_dir() else dest
        chosen = [(objects[name], target)]
    else:
        chosen = [(o, inside(dest, key[len(prefix):], run_id)) for key, o in objects.items() if key.startswith(prefix)]
    if not chosen:
        raise ArtifactStoreError(f"run {run_id!r} has no object or prefix {name!r}; it has: {', '.join(objects)}.")
    for obj, target in chosen:
        if target.is_file() and target.stat().st_size == obj["size"] and sha256_file(target) == obj["sha256"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            store.download(run_id, obj["key"], partial)
            size = partial.stat().st_size
            if size != obj["size"]:
                raise ChecksumMismatch(f"{store.url(run_id, obj['key'])}: size {size:,} bytes differs from the"
                                       f" manifest's {obj['size']:,}; the stored object is truncated or was replaced.")
            got = sha256_file(partial)
            if got != obj["sha256"]:
                raise ChecksumMismatch(f"{store.url(run_id, obj['key'])}: sha256 {got} differs from the manifest's"
                                       f" {obj['sha256']}; the stored object is damaged or was replaced.")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return [target for _, target in chosen]
