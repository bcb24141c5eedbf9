"""Re-publishing a complete run with changed content, cut short: never a "complete" run that fails its
checksums. Against the file store and a real SeaweedFS whose server is killed mid-upload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftpipe.artifacts import (
    ArtifactStoreError, FileArtifactStore, RunIncomplete, StoreUnavailable, publish_directory, restore,
)
from tests.s3_fixtures import SeaweedS3
from tests.test_artifacts_s3 import SMALL_PARTS, _stop_then_restart, run_files, store_for


def change(files: dict[str, Path]) -> None:
    files["base_model.json"].write_text('{"repo_id": "peftpipe/tiny-llama", "revision": "second"}\n')
    big = files["weights/adapter.safetensors"]
    big.write_bytes(bytes(reversed(big.read_bytes())))


def assert_incomplete_then_republished(store, files: dict[str, Path], tmp_path: Path) -> None:
    assert store.read_manifest("run-1") is None, "a half re-published run must not look complete"
    with pytest.raises(RunIncomplete):
        restore(store, "run-1", "base_model.json", tmp_path / "early.json")
    publish_directory(store, "run-1", files, {})
    back = restore(store, "run-1", "weights", tmp_path / "back")
    assert back[0].read_bytes() == files["weights/adapter.safetensors"].read_bytes()
    assert json.loads(restore(store, "run-1", "base_model.json", tmp_path / "b.json")[0].read_text())["revision"] \
        == "second"


def test_file_store_republish_cut_short_leaves_an_incomplete_run(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "store")
    files = run_files(tmp_path / "out", big_mib=1)
    publish_directory(store, "run-1", files, {})
    change(files)
    missing = {**files, "zz/gone.txt": tmp_path / "gone.txt"}  # the publish dies after the changed objects
    with pytest.raises(FileNotFoundError):
        publish_directory(store, "run-1", missing, {})
    assert_incomplete_then_republished(store, files, tmp_path)


def test_unchanged_republish_keeps_the_run_complete(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "store")
    files = run_files(tmp_path / "out", big_mib=1)
    publish_directory(store, "run-1", files, {})
    publish_directory(store, "run-1", files, {"again": True})
    assert store.read_manifest("run-1")["again"] is True


@pytest.mark.slow
def test_s3_republish_cut_by_a_server_kill_leaves_an_incomplete_run(own_s3_server: SeaweedS3, tmp_path: Path) -> None:
    files = run_files(tmp_path / "out", big_mib=12)
    publish_directory(store_for(own_s3_server, "republish"), "run-1", files, {})
    change(files)
    on_progress, stopped, _ = _stop_then_restart(own_s3_server, 0.4, restart_after_s=None)
    settings = SMALL_PARTS.model_copy(update={"max_attempts": 2})
    with pytest.raises((StoreUnavailable, ArtifactStoreError)):
        publish_directory(store_for(own_s3_server, "republish", settings, on_progress=on_progress), "run-1", files, {})
    assert stopped.is_set()
    own_s3_server.start()
    assert_incomplete_then_republished(store_for(own_s3_server, "republish"), files, tmp_path)
