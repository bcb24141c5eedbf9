"""An OOM on one of two data-parallel ranks (CPU, gloo): the other rank is stopped at once, the
combined log is diagnosed as gpu_oom (not the collective timeout it would cause), and the retry
with a smaller micro batch completes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from peftpipe.attempts import AttemptRecord, first_attempt, run_attempts
from peftpipe.backends import LocalBackend
from peftpipe.failures import fatal_line
from peftpipe.engines.hf.stages import finetune_stage
from peftpipe.stages import fetch_stage, prepare_stage, run_paths
from peftpipe.validation import load_spec
from tests.conftest import write_spec

pytestmark = pytest.mark.e2e


def test_oom_on_one_rank_stops_both_and_the_retry_finishes(tmp_path: Path, hub_endpoint: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_spec(write_spec(tmp_path, {
        "model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
        "workdir": str(tmp_path / "runs"), "train.devices": 2, "train.global_batch_size": 8,
        "train.micro_batch_size": 4, "train.max_steps": 8, "train.checkpoint_every": 2, "train.preflight": False}))
    paths = run_paths(loaded, "two-ranks")
    model = fetch_stage(loaded, paths)
    prepare_stage(loaded, paths)
    monkeypatch.setenv("PEFTPIPE_FAULT_OOM_ABOVE_MBS", "2")
    monkeypatch.setenv("PEFTPIPE_FAULT_OOM_FROM_STEP", "3")
    monkeypatch.setenv("PEFTPIPE_FAULT_OOM_RANK", "1")
    records: list[AttemptRecord] = []
    ended: list[float] = []

    def run_one(settings):
        try:
            return finetune_stage(loaded, paths, model.path, settings, on_line=lambda line: None,
                                  backend=LocalBackend(), stop_rule=fatal_line)
        finally:
            ended.append(time.time())

    def keep(rows: list[AttemptRecord]) -> None:
        records[:] = rows

    result = run_attempts(loaded.spec, first_attempt(loaded.spec), run_one, on_records=keep)
    assert [(r.kind, r.micro_batch_size, r.gradient_accumulation) for r in records] == [
        ("gpu_oom", 4, 1), ("none", 2, 2)]
    assert records[0].evidence.startswith("torch.OutOfMemoryError: CUDA out of memory.")
    log = paths.stage_log("finetune", 1).read_text()
    assert "[rank1]" in log or "rank1" in log or "OutOfMemoryError" in log
    assert result.final_step == 8 and result.resumed_from_step == 2
    # Both ranks were gone within seconds of the first OOM line, not after gloo's 30-minute timeout.
    first_line_seen = records[1].resubmitted_after_s
    assert first_line_seen is not None and first_line_seen < 30
