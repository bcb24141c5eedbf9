"""The hf engine's rendered configs and argv, compared with reviewed golden files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftpipe.engines.hf import command
from peftpipe.slurm.launch import distributed_program
from peftpipe.paths import RunPaths
from peftpipe.validation import load_spec
from tests.conftest import write_spec
from tests.golden_files import assert_matches_golden

RUN = RunPaths(Path("/scratch/runs/tiny-squad-lora-20261123-120000"))
MODEL = Path("/scratch/hf-cache/models--peftpipe--tiny-llama/snapshots/0123abcd")


@pytest.mark.parametrize("method", ["lora", "ia3", "ptuning"])
def test_training_config(tmp_path: Path, method: str) -> None:
    loaded = load_spec(write_spec(tmp_path, {"peft.method": method}))
    config = command.training_config(loaded.spec, MODEL, RUN)
    assert_matches_golden(f"hf_train_{method}.json", json.dumps(config, indent=2) + "\n")


def test_retry_overrides_only_the_micro_batch(tmp_path: Path) -> None:
    loaded = load_spec(write_spec(tmp_path))
    first = command.training_config(loaded.spec, MODEL, RUN)
    retry = command.training_config(loaded.spec, MODEL, RUN, micro_batch_size=2)
    assert {k for k in first if first[k] != retry[k]} == {"micro_batch_size"}
    assert retry["global_batch_size"] == first["global_batch_size"]


def test_generation_config(tmp_path: Path) -> None:
    loaded = load_spec(write_spec(tmp_path))
    config = command.generation_config(loaded.spec, MODEL, RUN)
    assert_matches_golden("hf_generate.json", json.dumps(config, indent=2) + "\n")


def test_argv() -> None:
    config = RUN.stage_config("finetune")
    rendered = {
        "train_one_process": local_program(command.training_script_args(config), 1),
        "train_four_ranks": local_program(command.training_script_args(config), 4),
        "generate": local_program(command.generation_script_args(RUN.stage_config("evaluate")), 1),
    }
    assert_matches_golden("hf_argv.json", json.dumps(rendered, indent=2) + "\n")


def local_program(script_args: list[str], ranks: int) -> list[str]:
    program, _, _ = distributed_program("/opt/venv/bin/python", script_args, 1, ranks, "torchrun")
    return [str(word) for word in program]
