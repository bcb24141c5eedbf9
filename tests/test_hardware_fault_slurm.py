"""A GPU hardware fault on a real Slurm job: diagnosed as such and resubmitted away from its node."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from peftpipe.attempts import split_nodes
from peftpipe.backends import SlurmBackend, StageCommand
from peftpipe.failures import FailureKind, diagnose, fatal_line
from peftpipe.paths import RunPaths
from peftpipe.retry import AttemptSettings, next_attempt
from peftpipe.slurm.jobs import stage_job
from peftpipe.slurm.render import render_batch_script
from peftpipe.validation import load_spec
from tests.conftest import write_spec

pytestmark = pytest.mark.slurm

ECC = "RuntimeError: CUDA error: uncorrectable ECC error encountered"


def test_ecc_error_resubmits_away_from_the_node_it_ran_on(tmp_path: Path, slurm_cluster: str) -> None:
    loaded = load_spec(write_spec(tmp_path, {"execution.backend": "slurm", "execution.slurm": {
        "mem": "256M", "cpus_per_task": 1, "poll_max_interval_s": 2}}))
    paths = RunPaths(tmp_path / "runs" / "ecc")
    program = ["-c", f"print('step 7/100 loss 1.2', flush=True); import sys; sys.exit('{ECC}')"]
    outcome = SlurmBackend().run(loaded, paths, StageCommand("finetune", 1, program), stop_rule=fatal_line)
    assert (outcome.state, outcome.exit_code) == ("FAILED", 1)
    node = socket.gethostname().split(".")[0]
    assert outcome.nodes == node

    diagnosis = diagnose(outcome.state, outcome.exit_code, outcome.log_tail)
    assert diagnosis.kind is FailureKind.HARDWARE_FAULT and diagnosis.evidence == ECC
    decision = next_attempt(diagnosis, AttemptSettings(1, 4), 64, 1, max_attempts=3,
                            failed_nodes=split_nodes(outcome.nodes))
    assert decision.next == AttemptSettings(2, 4, exclude_nodes=(node,))
    assert f"away from {node}" in decision.reason
    job = stage_job(loaded.spec, "ecc", paths, "finetune", 2, ["-m", "x"], host_python="python3", gpus_per_node=1,
                    exclude=decision.next.exclude_nodes)
    assert f"#SBATCH --exclude={node}\n" in render_batch_script(job)


@pytest.mark.parametrize(("kind", "fix"), [(FailureKind.STORAGE_FULL, "free space"),
                                           (FailureKind.CONTAINER_ERROR, "execution.slurm.container"),
                                           (FailureKind.NAN_LOSS, "learning_rate"),
                                           (FailureKind.RESOURCE_ERROR, "fused kernels")])
def test_failures_a_resubmission_repeats_stop_with_the_fix(kind: FailureKind, fix: str) -> None:
    from peftpipe.failures import Diagnosis

    decision = next_attempt(Diagnosis(kind, "the line"), AttemptSettings(1, 4), 64, 1, max_attempts=5)
    assert not decision.retry and fix in decision.reason and "the line" in decision.reason
