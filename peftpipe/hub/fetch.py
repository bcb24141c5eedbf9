"""Fetch a base model with ``huggingface_hub`` and report exactly what was fetched.

A complete earlier download is reused without touching the network: after a download the
file list of that commit is recorded next to the Hub cache entry, and a later fetch of the
same commit (or of a branch whose Hub is unreachable) only checks the files against it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from peftpipe.hub.guarded import HubSentTooMuch, download_files, limit_hub_calls, listed_sizes

# Weight formats that duplicate safetensors shards; fetching both doubles the bytes.
_DUPLICATE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.ot")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Inside the cache's repository folder, which huggingface_hub's cache scan leaves alone
# (it reads only blobs/, refs/ and snapshots/).
_COMPLETE_DIR = "peftpipe-complete"
DEFAULT_TOKEN_HINT = "HF_TOKEN in the worker's environment"


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    repo_id: str | None
    commit_sha: str | None
    files: tuple[str, ...]
    from_cache: bool = False


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
    repo_id: str,
    revision: str,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    token_hint: str = DEFAULT_TOKEN_HINT,
    timeout_s: float = 60.0,
) -> FetchedModel:
    """Download ``repo_id`` at ``revision`` (pinned to its commit sha) into the Hub cache.

    ``token`` is used for this process's requests only; ``None`` lets huggingface_hub read
    ``HF_TOKEN`` or its token file. ``token_hint`` names where the token comes from, for the
    message of a refused request; the token itself is never part of a message. No Hub call
    waits longer than ``timeout_s`` for an answer, and no file grows past its listed size.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError,
    )
    from httpx2 import ConnectError, TimeoutException

    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
    if _COMMIT_SHA.match(revision) and (cached := _complete_snapshot(cache, repo_id, revision)):
        return cached
    api = HfApi(endpoint=endpoint, token=token)
    limit_hub_calls(timeout_s)
    try:
        info = api.model_info(repo_id, revision=revision, timeout=timeout_s)
        if cached := _complete_snapshot(cache, repo_id, info.sha):
            return cached
        wanted = files_to_fetch([sibling.rfilename for sibling in info.siblings or []])
        sizes = listed_sizes(api, repo_id, info.sha)
        path = download_files(repo_id, info.sha, wanted, sizes, cache, endpoint, token, timeout_s)
    except (ConnectError, TimeoutException, OfflineModeIsEnabled) as error:
        if cached := _complete_snapshot(cache, repo_id, _cached_ref(cache, repo_id, revision)):
            return cached
        silent = f"did not answer within {timeout_s:g} s" if isinstance(error, TimeoutException) else ""
        raise FetchError(
            f"cannot reach the Hub at {api.endpoint} ({type(error).__name__}{': ' + silent if silent else ''}) and"
            f" {cache} holds no complete download of {repo_id}@{revision}: check model.endpoint (or HF_ENDPOINT)"
            " and the network."
        ) from None
    except HubSentTooMuch as error:
        raise FetchError(f"{repo_id}@{info.sha} from {api.endpoint}: {error}. The Hub (or a proxy in between)"
                         " sends something other than the listed file: check model.endpoint.") from None
    except RevisionNotFoundError:
        raise FetchError(f"{repo_id} has no revision {revision!r}: check model.revision.") from None
    except GatedRepoError as error:
        raise _refused(repo_id, error.response.status_code, token, token_hint) from None
    except RepositoryNotFoundError as error:
        if error.response is not None and error.response.status_code in (401, 403):
            raise _refused(repo_id, error.response.status_code, token, token_hint) from None
        raise FetchError(
            f"{repo_id} was not found (404) at {api.endpoint}: check model.repo_id and model.revision."
        ) from None
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code in (401, 403):
            raise _refused(repo_id, error.response.status_code, token, token_hint) from None
        raise
    _record_complete(cache, repo_id, revision, info.sha, Path(path), wanted)
    return FetchedModel(path=Path(path), repo_id=repo_id, commit_sha=info.sha, files=tuple(wanted))


def _refused(repo_id: str, status: int, token: str | None, token_hint: str) -> FetchError:
    from huggingface_hub import get_token

    used = f"the token from {token_hint}" if token or get_token() else "no token"
    return FetchError(
        f"{repo_id} is gated or private and the Hub refused the request ({status}) made with {used}:"
        f" set {token_hint} to a token that has access to {repo_id}."
    )


def _repo_cache(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _cached_ref(cache: Path, repo_id: str, revision: str) -> str | None:
    if _COMMIT_SHA.match(revision):
        return revision
    ref = _repo_cache(cache, repo_id) / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def _record_complete(cache: Path, repo_id: str, revision: str, sha: str, snapshot: Path, files: list[str]) -> None:
    if revision != sha:
        # The download was by sha, so huggingface_hub wrote no ref; this one, in its format,
        # lets an offline fetch (ours or HF_HUB_OFFLINE=1) resolve the branch.
        ref = _repo_cache(cache, repo_id) / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(sha)
    record = _repo_cache(cache, repo_id) / _COMPLETE_DIR / f"{sha}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    sizes = {name: (snapshot / name).stat().st_size for name in files}
    partial = record.with_suffix(".partial")
    partial.write_text(json.dumps({"repo_id": repo_id, "commit_sha": sha, "files": sizes}, indent=2) + "\n")
    os.replace(partial, record)


def _complete_snapshot(cache: Path, repo_id: str, sha: str | None) -> FetchedModel | None:
    """The cached snapshot of ``sha`` if every file recorded after its download is still there."""
    if sha is None:
        return None
    record = _repo_cache(cache, repo_id) / _COMPLETE_DIR / f"{sha}.json"
    snapshot = _repo_cache(cache, repo_id) / "snapshots" / sha
    if not record.is_file():
        return None
    sizes: dict[str, int] = json.loads(record.read_text())["files"]
    for name, size in sizes.items():
        file = snapshot / name
        if not file.is_file() or file.stat().st_size != size:
            return None
    return FetchedModel(path=snapshot, repo_id=repo_id, commit_sha=sha, files=tuple(sorted(sizes)), from_cache=True)


def use_local_model(path: Path) -> FetchedModel:
    """A model already on disk: checked, not copied."""
    if not (path / "config.json").is_file():
        raise FetchError(f"{path} has no config.json: point model.path at a Hugging Face model directory.")
    files = tuple(sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()))
    return FetchedModel(path=path, repo_id=None, commit_sha=None, files=files)
