"""Prefect blocks: cluster settings, artifact store and secrets (registered with `prefect block register -m blocks`)."""
