"""Open the artifact store a URL names: ``file://DIR`` (:mod:`peftpipe.artifacts`) or ``s3://`` (:mod:`peftpipe.artifacts_s3`).

Its own module so that the S3 backend can build on the store interface without the interface
importing the backend back.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from peftpipe.artifacts import ArtifactStore, FileArtifactStore, Progress
from peftpipe.artifacts_s3 import S3Access, S3ArtifactStore
from peftpipe.spec import S3StoreSpec


def open_store(url: str, s3: S3StoreSpec | None = None, access: S3Access | None = None,
               on_progress: Progress | None = None) -> ArtifactStore:
    """The store at ``url``; ``s3`` and ``access`` configure an ``s3://`` store (ignored otherwise)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileArtifactStore(Path(parts.netloc + parts.path).expanduser())
    if parts.scheme == "s3":
        return S3ArtifactStore.from_url(url, s3, access, on_progress)
    raise ValueError(f"artifact store {url!r}: unsupported scheme {parts.scheme!r}")
