"""Prefect blocks: cluster settings, artifact store and secrets (registered with `prefect block register -m blocks`).

`prefect block register -m blocks` registers every block class in this namespace, so each one is
imported here.
"""

from blocks.artifact_store import ArtifactStore
from blocks.hf_token import HuggingFaceToken
from blocks.slurm_cluster import SlurmCluster

__all__ = ["ArtifactStore", "HuggingFaceToken", "SlurmCluster"]
