"""A spec that names a Slurm Cluster block takes the cluster's settings as defaults under its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_spec


def test_block_settings_fill_what_the_spec_leaves_unset(tmp_path: Path, prefect_api) -> None:
    from blocks.slurm_cluster import SlurmCluster
    from flows.finetune import load_or_log

    SlurmCluster(partition="gpu-a100", account="nlp-lab", mem="64G", max_mem="256G", gpu_type="a100",
                 time_limit="12:00:00", container_runtime="singularity",
                 container_image="/shared/images/nemo-24.03.sif").save("lab-cluster", overwrite=True)
    spec = write_spec(tmp_path, {"execution.backend": "slurm", "execution.slurm_block": "lab-cluster",
                                 "execution.slurm": {"mem": "96G", "cpus_per_task": 4}})
    slurm = load_or_log(str(spec), {}).spec.execution.slurm
    assert (slurm.partition, slurm.account, slurm.gpu_type, slurm.time_limit, slurm.max_mem) == (
        "gpu-a100", "nlp-lab", "a100", "12:00:00", "256G")
    assert (slurm.container.runtime, slurm.container.image) == ("singularity", "/shared/images/nemo-24.03.sif")
    assert (slurm.mem, slurm.cpus_per_task) == ("96G", 4)  # the spec's own values win


def test_an_unknown_block_name_fails_before_anything_runs(tmp_path: Path, prefect_api) -> None:
    from flows.finetune import load_or_log

    spec = write_spec(tmp_path, {"execution.backend": "slurm", "execution.slurm_block": "no-such-cluster"})
    with pytest.raises(ValueError, match="no-such-cluster"):
        load_or_log(str(spec), {})
