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

from peftpipe.artifacts import RESERVED, ArtifactStore

PROMOTED = f"{RESERVED}promoted"
RETUNE = f"{RESERVED}retune"
LOWER_IS_BETTER = {"loss"}


def _read(store: ArtifactStore, prefix: str, name: str) -> dict[str, Any] | None:
    content = store.read_bytes(prefix, f"{name}.json")
    return json.loads(content) if content is not None else None


def _write(store: ArtifactStore, prefix: str, name: str, record: dict[str, Any]) -> None:
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
