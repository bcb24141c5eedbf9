"""The run spec's artifact store, opened in the flow process with credentials resolved from blocks."""

from __future__ import annotations

from peftpipe.artifacts import ArtifactStore, open_store
from peftpipe.spec import LoadedSpec


def artifact_store(loaded: LoadedSpec) -> ArtifactStore:
    from blocks.credentials import s3_access

    artifacts = loaded.spec.artifacts
    access = s3_access(artifacts.s3.credentials_block) if artifacts.store.startswith("s3://") else None
    return open_store(artifacts.store, artifacts.s3, access)
