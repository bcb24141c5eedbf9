"""A rerun after a cancelled or failed attempt starts the next attempt, resuming from the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftpipe.data.prepare import prepare_dataset
from peftpipe.paths import RunPaths
from peftpipe.slurm.attempt_history import first_attempt_number
from peftpipe.slurm.client import SlurmClient
from peftpipe.engines.hf.stages import finetune_stage
from peftpipe.results import StageFailed
from peftpipe.retry import AttemptSettings
from peftpipe.validation import load_spec
from tests.conftest import TINY_REPO_ID, write_spec

pytestmark = pytest.mark.slurm


def test_rerun_after_a_cancelled_job_submits_the_next_attempt_from_the_checkpoint(
        tmp_path: Path, hub_root: Path, slurm_cluster: str) -> None:
    loaded = load_spec(write_spec(tmp_path / "spec", {
        "execution.backend": "slurm", "execution.slurm": {"mem": "2G", "cpus_per_task": 1, "poll_max_interval_s": 2},
        "train.max_steps": 12, "train.checkpoint_every": 2}))
    paths = RunPaths(tmp_path / "runs" / "rerun")
    prepare_dataset(loaded, paths.data_dir)
    model = hub_root / TINY_REPO_ID
    client = SlurmClient()

    def cancel_at_first_checkpoint(line: str) -> None:
        if line.startswith("checkpoint saved") and not cancelled:
            cancelled.append(paths.job_id_file("finetune", 1).read_text().strip())
            client.cancel(cancelled)

    cancelled: list[str] = []
    with pytest.raises(StageFailed, match="ended CANCELLED"):
        finetune_stage(loaded, paths, model, AttemptSettings(1, 4), on_line=cancel_at_first_checkpoint)

    notes: list[str] = []
    attempt = first_attempt_number(paths, "finetune", client, on_line=notes.append)
    assert attempt == 2, notes
    assert f"finetune attempt 1 (Slurm job {cancelled[0]}) ended CANCELLED; this run starts attempt 2" in notes[0]
    lines: list[str] = []
    result = finetune_stage(loaded, paths, model, AttemptSettings(attempt, 4), on_line=lines.append)
    assert result.job_id != cancelled[0]
    assert result.final_step == 12 and result.resumed_from_step is not None and result.resumed_from_step >= 2
    assert any(line.startswith("resuming from checkpoint step-") for line in lines)
    assert client.status([cancelled[0]])[cancelled[0]].state == "CANCELLED"

    # The same rerun once more: the last attempt completed, so it is re-attached to, not run again.
    assert first_attempt_number(paths, "finetune", client) == 2
