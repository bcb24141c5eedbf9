"""The real fetch code (huggingface_hub) against the loopback Hub mirror."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftpipe.hub.fetch import FetchError, fetch_model, files_to_fetch
from peftpipe.hub.mirror import MirrorRoot
from tests.conftest import TINY_REPO_ID, serve_mirror

WEIGHTS = "model.safetensors"


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file of the machine's user


def test_safetensors_make_bin_shards_redundant() -> None:
    repo = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "tokenizer.json",
            "consolidated.pth"]
    assert files_to_fetch(repo) == ["config.json", "model-00001-of-00002.safetensors",
                                    "model-00002-of-00002.safetensors", "tokenizer.json"]
    assert files_to_fetch(["config.json", "pytorch_model.bin"]) == ["config.json", "pytorch_model.bin"]


def test_fetch_pins_the_commit_and_reuses_the_cache(tmp_path: Path, hub_endpoint: str, hub_root: Path) -> None:
    fetched = fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=hub_endpoint)
    assert len(fetched.commit_sha) == 40 and not fetched.from_cache
    assert fetched.path.name == fetched.commit_sha  # the snapshot directory of that exact commit
    for name in fetched.files:
        assert (fetched.path / name).read_bytes() == (hub_root / TINY_REPO_ID / name).read_bytes()
    again = fetch_model(TINY_REPO_ID, fetched.commit_sha, cache_dir=tmp_path, endpoint=hub_endpoint)
    assert again.path == fetched.path and again.from_cache


def test_a_complete_download_is_reused_with_the_hub_unreachable(tmp_path: Path, hub_root: Path) -> None:
    mirror = MirrorRoot(hub_root)
    with serve_mirror(mirror) as endpoint:
        first = fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint)
        served = len(mirror.requests)
        by_sha = fetch_model(TINY_REPO_ID, first.commit_sha, cache_dir=tmp_path, endpoint=endpoint)
        assert len(mirror.requests) == served, "a complete pinned download must not touch the network"
    # The server is gone: the branch resolves through the cache's ref, the sha directly.
    offline = fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint)
    assert offline.path == first.path == by_sha.path and offline.commit_sha == first.commit_sha
    assert offline.from_cache and offline.files == first.files
    # A damaged copy is not complete: without the Hub it is an error that says so.
    (first.path / WEIGHTS).unlink()
    with pytest.raises(FetchError, match=r"cannot reach the Hub at .* holds no complete download of "
                                         rf"{TINY_REPO_ID}@main: check model.endpoint"):
        fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint)


def test_a_download_cut_mid_file_resumes(tmp_path: Path, hub_root: Path) -> None:
    size = (hub_root / TINY_REPO_ID / WEIGHTS).stat().st_size
    mirror = MirrorRoot(hub_root, interrupt_once={f"{TINY_REPO_ID}/{WEIGHTS}": size // 2})
    with serve_mirror(mirror) as endpoint:
        fetched = fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint)
    assert (fetched.path / WEIGHTS).read_bytes() == (hub_root / TINY_REPO_ID / WEIGHTS).read_bytes()
    weight_gets = [r for r in mirror.requests if r[0] == "GET" and r[1].endswith(f"/{WEIGHTS}")]
    assert len(weight_gets) == 2, "one cut download, one retry"
    assert not mirror.interrupt_once


def test_gated_repo_needs_the_token_and_the_message_names_where_it_comes_from(tmp_path: Path,
                                                                              hub_root: Path) -> None:
    mirror = MirrorRoot(hub_root, gated_tokens={TINY_REPO_ID: "hf_gate_0123456789"})
    hint = "the Prefect Secret block 'hf-token'"
    with serve_mirror(mirror) as endpoint:
        with pytest.raises(FetchError) as refused:
            fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint, token_hint=hint)
        assert str(refused.value) == (
            f"{TINY_REPO_ID} is gated or private and the Hub refused the request (401) made with no token:"
            f" set {hint} to a token that has access to {TINY_REPO_ID}.")
        with pytest.raises(FetchError, match="made with the token from the Prefect Secret block") as wrong:
            fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint, token="hf_wrong_token",
                        token_hint=hint)
        assert "hf_wrong_token" not in str(wrong.value)
        fetched = fetch_model(TINY_REPO_ID, "main", cache_dir=tmp_path, endpoint=endpoint,
                              token="hf_gate_0123456789")
    assert (fetched.path / "config.json").is_file()


def test_missing_repo_and_revision_say_what_to_check(tmp_path: Path, hub_endpoint: str) -> None:
    with pytest.raises(FetchError, match=r"peftpipe/absent was not found \(404\).*check model.repo_id"):
        fetch_model("peftpipe/absent", "main", cache_dir=tmp_path, endpoint=hub_endpoint)
    with pytest.raises(FetchError, match="has no revision 'v2': check model.revision"):
        fetch_model(TINY_REPO_ID, "v2", cache_dir=tmp_path, endpoint=hub_endpoint)
