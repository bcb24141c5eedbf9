"""The Slurm cluster a group shares: partition, account, container and job defaults, set once in Prefect."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from prefect.blocks.core import Block


class SlurmCluster(Block):
    """Where and how a run's Slurm jobs are submitted, as defaults a run spec may override.

    A spec names the block in ``execution.slurm_block``; every value the spec's ``execution.slurm``
    section sets explicitly wins over the block's.

    Example:
        ```python
        from blocks.slurm_cluster import SlurmCluster

        cluster = SlurmCluster.load("BLOCK_NAME")
        print(cluster.partition, cluster.container_image)
        ```
    """

    _block_type_name = "Slurm Cluster"
    _block_type_slug = "slurm-cluster"
    _description = "Partition, account, container and default job resources of a Slurm cluster."

    partition: str | None = Field(None, description="Partition for the jobs (-p); unset: the cluster's default.")
    account: str | None = Field(None, description="Account the jobs are charged to (-A).")
    qos: str | None = Field(None, description="Quality of service (--qos).")
    container_runtime: Literal["none", "singularity", "pyxis"] = Field(
        "none", description="none: the worker's Python on a shared file system; singularity: singularity exec"
                            " --nv; pyxis: srun --container-image.")
    container_image: str | None = Field(None, description="A .sif file (singularity) or a registry image such as"
                                                          " nvcr.io#nvidia/nemo:24.03 (pyxis).")
    mounts: list[str] = Field(default_factory=list, description="SRC[:DST] paths bound into the container.")
    time_limit: str = Field("04:00:00", description="Default wall time per job, [D-]HH:MM:SS.")
    mem: str = Field("32G", description="Default host memory per node, e.g. 64G or 4000M.")
    max_mem: str | None = Field(None, description="Most host memory an out-of-memory retry may ask for.")
    gpu_type: str | None = Field(None, description="GPU type in the cluster's gres names, e.g. h100.")

    def slurm_defaults(self) -> dict[str, Any]:
        """The block as an ``execution.slurm`` mapping of the run spec (unset values left out)."""
        values: dict[str, Any] = {"partition": self.partition, "account": self.account, "qos": self.qos,
                                  "time_limit": self.time_limit, "mem": self.mem, "max_mem": self.max_mem,
                                  "gpu_type": self.gpu_type}
        container = {"runtime": self.container_runtime, "image": self.container_image, "mounts": list(self.mounts)}
        values["container"] = {k: v for k, v in container.items() if v is not None}
        return {k: v for k, v in values.items() if v is not None}
