"""Fetch a base model with ``huggingface_hub`` and report exactly what was fetched."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

# Weight formats that duplicate safetensors shards; fetching both doubles the bytes.
_DUPLICATE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.ot")


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    repo_id: str | None
    commit_sha: str | None
    files: tuple[str, ...]


class FetchError(RuntimeError):
    """A model that cannot be fetched, with what to do about it."""


def files_to_fetch(repo_files: list[str]) -> list[str]:
    """Every file of the repository except weights that duplicate the safetensors ones."""
    if not any(name.endswith(".safetensors") for name in repo_files):
        return sorted(repo_files)
    return sorted(
        name for name in repo_files if not any(fnmatch.fnmatch(name, pattern) for pattern in _DUPLICATE_WEIGHTS)
    )


def fetch_model(
    repo_id: str, revision: str, cache_dir: Path | None = None, endpoint: str | None = None
) -> FetchedModel:
    """Download ``repo_id`` at ``revision`` (pinned to its commit sha) into the Hub cache.

    The token comes from huggingface_hub's own sources (``HF_TOKEN`` or the token file), so
    it never passes through the pipeline's parameters or logs.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo_id, revision=revision)
        wanted = files_to_fetch([sibling.rfilename for sibling in info.siblings or []])
        path = snapshot_download(
            repo_id, revision=info.sha, cache_dir=cache_dir, endpoint=endpoint, allow_patterns=wanted
        )
    except GatedRepoError as error:
        raise FetchError(
            f"{repo_id} is gated and the request was refused ({error.response.status_code}): "
            "set HF_TOKEN in the worker's environment (or the Hub token Secret block) to a token with access."
        ) from None
    except RevisionNotFoundError:
        raise FetchError(f"{repo_id} has no revision {revision!r}: check model.revision.") from None
    except RepositoryNotFoundError:
        raise FetchError(
            f"{repo_id} was not found (404) at {api.endpoint}: check model.repo_id and model.revision."
        ) from None
    return FetchedModel(path=Path(path), repo_id=repo_id, commit_sha=info.sha, files=tuple(wanted))


def use_local_model(path: Path) -> FetchedModel:
    """A model already on disk: checked, not copied."""
    if not (path / "config.json").is_file():
        raise FetchError(f"{path} has no config.json: point model.path at a Hugging Face model directory.")
    files = tuple(sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()))
    return FetchedModel(path=path, repo_id=None, commit_sha=None, files=files)
