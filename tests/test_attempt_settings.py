"""Attempt settings reach the job unchanged: exact memory, and each attempt's own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from peftpipe.attempts import first_attempt, memory_limit_mb
from peftpipe.backends import LocalBackend
from peftpipe.engines import engine_for
from peftpipe.engines.hf.stages import finetune_stage
from peftpipe.failures import diagnose
from peftpipe.results import StageFailed
from peftpipe.retry import AttemptSettings, next_attempt
from peftpipe.slurm.render import render_batch_script
from peftpipe.stages import run_paths
from peftpipe.validation import load_spec
from tests.conftest import write_spec
from tests.nemo_cases import LLAMA

HOST_OOM = (Path(__file__).parent / "data" / "logs" / "host_oom_cgroup.log").read_text()


def model_dir(directory: Path) -> Path:
    model = directory / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text('{"model_type": "llama"}\n')
    return model


def slurm_spec(tmp_path: Path, slurm: dict) -> Path:
    return write_spec(tmp_path, {"model.path": str(model_dir(tmp_path)), "model.repo_id": None,
                                 "workdir": str(tmp_path / "runs"), "execution.backend": "slurm",
                                 "execution.slurm": slurm})


def test_mem_in_megabytes_is_rendered_as_written(tmp_path: Path) -> None:
    spec = slurm_spec(tmp_path, {"mem": "4000M"})
    result = CliRunner().invoke(app, ["render", str(spec), "--stage", "finetune"])
    assert result.exit_code == 0, result.output
    assert "#SBATCH --mem=4000M\n" in result.stdout


@pytest.mark.parametrize("engine", ["hf", "nemo"])
def test_a_host_oom_retry_asks_for_max_mem_in_exact_megabytes(tmp_path: Path, engine: str) -> None:
    changes = {"execution.slurm.mem": "4000M", "execution.slurm.max_mem": "6000M",
               "execution.slurm.partition": None, "execution.slurm.account": None}
    if engine == "hf":
        loaded = load_spec(slurm_spec(tmp_path, {"mem": "4000M"}), changes)
    else:
        # The convert job asks for its own memory; 6000M keeps it within max_mem.
        loaded = load_spec(LLAMA, {**changes, "workdir": str(tmp_path / "runs"), "nemo.convert.mem": "6000M"})
    spec = loaded.spec
    engine_impl = engine_for(spec.engine)
    first = first_attempt(spec)
    decision = next_attempt(diagnose("OUT_OF_MEMORY", 0, HOST_OOM), first, spec.train.global_batch_size,
                            engine_impl.data_parallel_size(spec), spec.train.max_attempts, memory_limit_mb(spec))
    assert decision.next == AttemptSettings(2, first.micro_batch_size, first.activation_checkpointing,
                                            mem_mb=6000, mem_raised=True)
    assert "4000 MB" in decision.reason and "6000 MB" in decision.reason
    paths = run_paths(loaded, "exact-mem")
    model = loaded.resolve(spec.model.path)
    assert "#SBATCH --mem=4000M\n" in render_batch_script(engine_impl.job(loaded, paths, "finetune", first, model).job)
    retry = render_batch_script(engine_impl.job(loaded, paths, "finetune", decision.next, model).job)
    assert "#SBATCH --mem=6000M\n" in retry
    assert f"--output={paths.attempt_dir('finetune', 2)}/slurm-%j.out" in retry
    if engine == "hf":
        assert f"--config {paths.stage_config('finetune', 2)}" in retry


def test_attempt_one_keeps_its_config_after_attempt_two(tmp_path: Path) -> None:
    """Each attempt's config lives in its own directory, so the first stays replayable after a retry."""
    loaded = load_spec(write_spec(tmp_path, {"model.path": str(model_dir(tmp_path)), "model.repo_id": None,
                                             "workdir": str(tmp_path / "runs")}))
    paths = run_paths(loaded, "two-attempts")
    first = first_attempt(loaded.spec)
    second = AttemptSettings(2, first.micro_batch_size // 2, activation_checkpointing=True)
    for settings in (first, second):
        # The model directory holds no weights: the training script fails at once, after its config was read.
        with pytest.raises(StageFailed):
            finetune_stage(loaded, paths, model_dir(tmp_path), settings, on_line=lambda line: None,
                           backend=LocalBackend())
    one = json.loads(paths.stage_config("finetune", 1).read_text())
    two = json.loads(paths.stage_config("finetune", 2).read_text())
    assert (one["micro_batch_size"], one["activation_checkpointing"]) == (first.micro_batch_size, False)
    assert (two["micro_batch_size"], two["activation_checkpointing"]) == (second.micro_batch_size, True)
    published = paths.attempt_files(("finetune",))
    assert published["jobs/finetune/attempt-1.config.json"] == paths.stage_config("finetune", 1)
    assert published["jobs/finetune/attempt-2.config.json"] == paths.stage_config("finetune", 2)
