"""Downloads that cannot hang and cannot outgrow the repository's tree.

``huggingface_hub``'s shared HTTP client has no timeout of its own, so a Hub that accepts the
connection and never answers stalls a metadata call for good; and a file's body is written
for as long as the server sends it. Here every call gets a timeout (the session's default,
plus the per-call ones the library takes), and each file is downloaded with a progress class
that counts its bytes against the size the tree lists and stops the transfer past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


class HubSentTooMuch(RuntimeError):
    """The Hub sent more bytes for a file than its tree lists."""


def limit_hub_calls(timeout_s: float) -> None:
    """Every request of huggingface_hub's shared client gives up after ``timeout_s`` of silence."""
    import httpx2
    from huggingface_hub import get_session

    get_session().timeout = httpx2.Timeout(timeout_s, connect=min(timeout_s, 10.0))


def listed_sizes(api: Any, repo_id: str, sha: str) -> dict[str, int]:
    """Each file's size from the repository tree at ``sha``."""
    from huggingface_hub.hf_api import RepoFile

    return {entry.path: entry.size for entry in api.list_repo_tree(repo_id, revision=sha, recursive=True)
            if isinstance(entry, RepoFile)}


def _capped_progress(name: str, limit: int) -> type:
    from huggingface_hub.utils import tqdm as hf_tqdm

    class CappedProgress(hf_tqdm):  # type: ignore[misc, valid-type]
        """Counts a file's bytes as they arrive (before they are written) and stops past ``limit``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.received = int(kwargs.get("initial") or 0)
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self.received += int(n or 0)
            if self.received > limit:
                raise HubSentTooMuch(f"the Hub sent more than the {limit:,} bytes its tree lists for {name};"
                                     " the download was stopped")
            return super().update(n)

    return CappedProgress


def download_files(repo_id: str, sha: str, names: Iterable[str], sizes: dict[str, int], cache: Path,
                   endpoint: str | None, token: str | None, timeout_s: float, workers: int = 4) -> Path:
    """Download ``names`` at commit ``sha`` into the Hub cache; the snapshot directory."""
    from huggingface_hub import hf_hub_download

    def one(name: str) -> str:
        return hf_hub_download(repo_id, name, revision=sha, cache_dir=cache, endpoint=endpoint, token=token,
                               etag_timeout=timeout_s, tqdm_class=_capped_progress(name, sizes[name]))

    wanted = list(names)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        paths = [Path(path) for path in pool.map(one, wanted)]
    for name, path in zip(wanted, paths):
        if path.stat().st_size != sizes[name]:
            raise HubSentTooMuch(f"{name}: {path.stat().st_size:,} bytes arrived, the tree lists {sizes[name]:,}")
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / sha
