"""A run's ``manifest.json`` as read back from a store: checked before anything trusts it.

A store may be a bucket the whole lab can write, so a manifest is input like any other: its
object keys become file paths on restore, its sizes and checksums decide what is accepted.
:func:`checked_manifest` refuses a manifest that is not JSON, lacks a field, has a field of the
wrong type or an unsafe key, with one message naming the run, the field and the fix.
"""

from __future__ import annotations

import json
import re
from typing import Any

from peftpipe.safe_names import key_problem

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}\Z")
REPUBLISH = "Fix: republish the run (peftpipe run --run-id RUN), or remove the run from the store."


class ManifestError(ValueError):
    """A manifest read from a store is malformed or unsafe; the message names the run and the field."""


def checked_manifest(run_id: str, content: bytes, where: str) -> dict[str, Any]:
    """The manifest in ``content`` (read from ``where``) after checking every field a reader uses."""

    def refuse(problem: str) -> ManifestError:
        return ManifestError(f"run {run_id!r}: {where}: {problem}. {REPUBLISH}")

    try:
        manifest = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise refuse(f"not valid JSON ({detail})") from None
    if not isinstance(manifest, dict):
        raise refuse(f"holds a JSON {type(manifest).__name__}, not an object")
    objects = manifest.get("objects")
    if not isinstance(objects, list):
        raise refuse("has no `objects` list" if objects is None else f"`objects` is a {type(objects).__name__},"
                     " not a list")
    for index, entry in enumerate(objects):
        if not isinstance(entry, dict):
            raise refuse(f"objects[{index}] is a {type(entry).__name__}, not an object")
        key, size, sha256 = entry.get("key"), entry.get("size"), entry.get("sha256")
        problem = key_problem(key)
        if problem is not None:
            raise refuse(f"objects[{index}].key {key!r} {problem}; it could point outside the destination,"
                         " so nothing was read or written")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise refuse(f"objects[{index}] ({key}): size {size!r} is not a byte count")
        if not isinstance(sha256, str) or not SHA256_PATTERN.match(sha256):
            raise refuse(f"objects[{index}] ({key}): sha256 {sha256!r} is not 64 hex digits")
    for field in ("created", "run_id"):
        if field in manifest and not isinstance(manifest[field], str):
            raise refuse(f"`{field}` is a {type(manifest[field]).__name__}, not text")
    if "base_model" in manifest and not isinstance(manifest["base_model"], (dict, type(None))):
        raise refuse(f"`base_model` is a {type(manifest['base_model']).__name__}, not an object")
    return manifest
