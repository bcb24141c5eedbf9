"""The runs of this spec side by side, as a table artifact on the run's page in the Prefect UI."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

from flows.store import artifact_store
from peftpipe.artifacts import ArtifactStoreError
from peftpipe.run_table import collect_runs, runs_table
from peftpipe.spec import LoadedSpec


def runs_table_key(spec_name: str) -> str:
    return f"runs-{spec_name}"  # spec names are slugs: a valid artifact key, one history per spec


def publish_runs_table(loaded: LoadedSpec) -> str | None:
    """The same table as ``peftpipe runs NAME``; the key, or None when the store could not be read."""
    spec = loaded.spec
    try:
        rows = runs_table(collect_runs(artifact_store(loaded), spec.name))
    except ArtifactStoreError:
        return None  # the run itself is published; a table it cannot read is no reason to fail it
    if not rows:
        return None
    key = runs_table_key(spec.name)
    create_table_artifact(rows, key=key, description=f"Runs of spec {spec.name}: settings that differ, data, "
                                                     "metrics, promoted (`peftpipe runs " + spec.name + "`)")
    return key
