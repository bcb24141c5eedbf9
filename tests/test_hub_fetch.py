"""The real fetch code (huggingface_hub) against the loopback Hub mirror."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftpipe.hub.fetch import FetchError, fetch_model, files_to_fetch
from tests.conftest import TINY_REPO_ID


def test_safetensors_make_bin_shards_redundant() -> None:
    repo = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "tokenizer.json",
            "consolidated.pth"]
    assert files_to_fetch(repo) == ["config.json", "model-00001-of-00002.safetensors",
                                    "model-00002-of-00002.safetensors", "tokenizer.json"]
    assert files_to_fetch(["config.json", "pytorch_model.bin"]) == ["config.json", "pytorch_model.bin"]


def test_fetch_pins_the_commit_and_reuses_the_cache(tmp_path: Path, hub_endpoint: str, hub_root: Path) -> None:
    fetched = fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=hub_endpoint)
    assert len(fetched.commit_sha) == 40
    assert fetched.path.name == fetched.commit_sha  # the snapshot directory of that exact commit
    for name in fetched.files:
        assert (fetched.path / name).read_bytes() == (hub_root / TINY_REPO_ID / name).read_bytes()
    again = fetch_model(TINY_REPO_ID, fetched.commit_sha, cache_dir=tmp_path, endpoint=hub_endpoint)
    assert again.path == fetched.path


def test_missing_repo_and_revision_say_what_to_check(tmp_path: Path, hub_endpoint: str) -> None:
    with pytest.raises(FetchError, match=r"peftpipe/absent was not found \(404\).*check model.repo_id"):
        fetch_model("peftpipe/absent", "main", cache_dir=tmp_path, endpoint=hub_endpoint)
    with pytest.raises(FetchError, match="has no revision 'v2': check model.revision"):
        fetch_model(TINY_REPO_ID, "v2", cache_dir=tmp_path, endpoint=hub_endpoint)
