"""The run spec's artifact store, opened in the flow process with credentials resolved from blocks."""

from __future__ import annotations

from blocks.credentials import store_access
from peftpipe.artifacts import ArtifactStore
from peftpipe.stores import open_store
from peftpipe.spec import LoadedSpec


def artifact_store(loaded: LoadedSpec) -> ArtifactStore:
    artifacts = loaded.spec.artifacts
    return open_store(artifacts.store, artifacts.s3, store_access(loaded))
