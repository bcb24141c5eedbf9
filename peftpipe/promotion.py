"""The promoted adapter of a spec, and the data a re-tune last trained on: small records in the artifact store.

``_promoted/<spec name>.json`` points at the run whose adapter is in use (run id, metric, data
fingerprint); ``_retune/<spec name>.json`` remembers the data fingerprint of the last successful
re-tune. Both live next to the runs so that every worker, and a person with
``peftpipe artifacts promoted NAME``, resolves the same answer.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftpipe.artifacts import RESERVED, ArtifactStore, ArtifactStoreError
from peftpipe.safe_names import SPEC_NAME_PATTERN, UnsafeName, is_run_id

PROMOTED = f"{RESERVED}promoted"
RETUNE = f"{RESERVED}retune"
LOWER_IS_BETTER = {"loss"}


def _check_name(name: str) -> None:
    if not SPEC_NAME_PATTERN.match(name):
        raise UnsafeName(f"spec name {name!r} is not a valid spec name. Fix: use the `name:` of the run spec"
                         " (lowercase letters, digits and dashes, max 63).")


def _read(store: ArtifactStore, prefix: str, name: str) -> dict[str, Any] | None:
    """The record, checked: anyone who can write the store can write it, and its run id is used as a path."""
    _check_name(name)
    content = store.read_bytes(prefix, f"{name}.json")
    if content is None:
        return None
    where = store.url(prefix, f"{name}.json")
    try:
        record = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ArtifactStoreError(f"{where} is not valid JSON. Fix: promote a run again, or delete it.") from None
    if not isinstance(record, dict) or not is_run_id(record.get("run_id")):
        run_id = record.get("run_id") if isinstance(record, dict) else None
        raise ArtifactStoreError(f"{where}: run_id {run_id!r} is not a valid run id, so it is not used."
                                 " Fix: promote a run again, or delete it.")
    return record


def _write(store: ArtifactStore, prefix: str, name: str, record: dict[str, Any]) -> None:
    _check_name(name)
    record = {**record, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.check()
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / f"{name}.json"
        source.write_text(json.dumps(record, indent=2) + "\n")
        store.put_file(prefix, f"{name}.json", source)


def read_promoted(store: ArtifactStore, name: str) -> dict[str, Any] | None:
    """The promoted pointer of spec ``name`` ({run_id, metric, value, fingerprint, ...}), if any."""
    return _read(store, PROMOTED, name)


def promote(store: ArtifactStore, name: str, run_id: str, metric: str, value: float, fingerprint: str) -> None:
    _write(store, PROMOTED, name, {"run_id": run_id, "metric": metric, "value": value, "fingerprint": fingerprint,
                                   "manifest_url": store.url(run_id, "manifest.json")})


def read_last_retune(store: ArtifactStore, name: str) -> dict[str, Any] | None:
    return _read(store, RETUNE, name)


def record_retune(store: ArtifactStore, name: str, run_id: str, fingerprint: str, promoted: bool) -> None:
    _write(store, RETUNE, name, {"run_id": run_id, "fingerprint": fingerprint, "promoted": promoted})


def is_better(metric: str, candidate: float, incumbent: float | None) -> bool:
    """Whether ``candidate`` beats ``incumbent`` on ``metric`` (loss: lower; the scores: higher); ties keep the incumbent."""
    if incumbent is None:
        return True
    return candidate < incumbent if metric in LOWER_IS_BETTER else candidate > incumbent
