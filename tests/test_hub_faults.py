"""A Hub that stalls or oversends, served by the loopback mirror, fetched with the real huggingface_hub."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from peftpipe.hub.fetch import FetchError, fetch_model
from peftpipe.hub.mirror import MirrorRoot
from tests.conftest import TINY_REPO_ID, serve_mirror

WEIGHTS = "model.safetensors"


def test_a_hub_that_never_answers_fails_with_a_timeout_instead_of_hanging(tmp_path: Path, hub_root: Path) -> None:
    mirror = MirrorRoot(hub_root, stall_paths=("/api/models/",))
    outcome: list[BaseException | object] = []

    def fetch() -> None:
        try:
            outcome.append(fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint, timeout_s=2))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    with serve_mirror(mirror) as endpoint:
        worker = threading.Thread(target=fetch, daemon=True)
        worker.start()
        worker.join(120)  # bounded by the timeout and huggingface_hub's retries; without a timeout: forever
        assert not worker.is_alive(), "fetch-model hung on a Hub that never answers"
    assert isinstance(outcome[0], FetchError), outcome
    assert "did not answer within 2 s" in str(outcome[0]) and "check model.endpoint" in str(outcome[0])


def test_a_hub_sending_more_than_the_listed_size_is_stopped_at_that_size(tmp_path: Path, hub_root: Path) -> None:
    size = (hub_root / TINY_REPO_ID / WEIGHTS).stat().st_size
    mirror = MirrorRoot(hub_root, oversend={f"{TINY_REPO_ID}/{WEIGHTS}": 64 << 20})  # 64 MiB too many
    with serve_mirror(mirror) as endpoint:
        with pytest.raises(FetchError, match=rf"the Hub sent more than the {size:,} bytes its tree lists for"
                                             rf" {WEIGHTS}; the download was stopped"):
            fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint, timeout_s=10)
    on_disk = [p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()]
    assert max(on_disk) <= size, "nothing on disk grew past the listed size"
    assert not (tmp_path / f"models--{TINY_REPO_ID.replace('/', '--')}" / "snapshots").exists() or not any(
        (tmp_path / f"models--{TINY_REPO_ID.replace('/', '--')}" / "snapshots").rglob(WEIGHTS))
