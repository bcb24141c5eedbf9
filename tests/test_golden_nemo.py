"""The nemo engine's rendered commands and batch scripts, compared with reviewed golden files.

The seed workflows (tests/golden/nemo/seed_*) are the evidence that the rendered commands match
the NeMo scripts of their container; test_nemo_standin.py runs the same renders against the
stand-in's independent expectations table.
"""

from __future__ import annotations

import json

import pytest

from peftpipe.engines.nemo import jobs
from peftpipe.engines.nemo.layout import NemoPaths
from tests.golden_files import assert_matches_golden
from tests.nemo_cases import LLAMA, MISTRAL, RUN, batch_script, commands, load

SEEDS = {"seed_llama2_squad_singularity": LLAMA, "seed_mistral_pubmedqa_pyxis": MISTRAL}


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_workflow_commands(seed: str) -> None:
    spec = SEEDS[seed]
    rendered = [command.as_json() for command in commands(load(spec), spec, NemoPaths(RUN))]
    assert_matches_golden(f"nemo/{seed}_commands.json", json.dumps(rendered, indent=2) + "\n")


@pytest.mark.parametrize("stage", ["convert", "finetune", "evaluate"])
@pytest.mark.parametrize("seed", SEEDS)
def test_seed_workflow_batch_scripts(seed: str, stage: str) -> None:
    spec = SEEDS[seed]
    loaded = load(spec)
    command = commands(loaded, spec, NemoPaths(RUN))[jobs.STAGES.index(stage)]
    assert_matches_golden(f"nemo/{seed}_{stage}.sbatch", batch_script(loaded, spec, command))


@pytest.mark.parametrize("method", ["lora", "ptuning", "adapter", "ia3"])
def test_finetune_overrides_per_scheme(method: str) -> None:
    loaded = load(LLAMA, {"peft.method": method, "nemo.layer_selection": None if method == "ptuning" else [1, 32]})
    command = jobs.finetune_command(loaded, NemoPaths(RUN))
    assert_matches_golden(f"nemo/finetune_{method}.json", json.dumps(command.as_json(), indent=2) + "\n")


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_multi_node_finetune(launcher: str) -> None:
    """Two nodes of 4 V100s, TP 4: data-parallel 2 across nodes; torchrun needs a rendezvous host."""
    loaded = load(LLAMA, {"train.num_nodes": 2, "execution.slurm.launcher": launcher})
    command = jobs.finetune_command(loaded, NemoPaths(RUN))
    assert_matches_golden(f"nemo/finetune_2_nodes_{launcher}.sbatch", batch_script(loaded, LLAMA, command))


def test_oom_retry_changes_only_micro_batch_and_keeps_the_log_dir() -> None:
    loaded = load(LLAMA)
    first = jobs.finetune_command(loaded, NemoPaths(RUN)).overrides
    retry = jobs.finetune_command(loaded, NemoPaths(RUN), micro_batch_size=2).overrides
    assert [line for line in retry if line not in first] == ["model.micro_batch_size=2",
                                                            "model.data.validation_ds.micro_batch_size=2"]
    assert "exp_manager.explicit_log_dir=/scratch/peftpipe/runs/golden/finetune/nemo" in retry
    assert "exp_manager.resume_if_exists=True" in retry


def test_generation_restores_the_adapter_training_writes() -> None:
    loaded = load(LLAMA)
    paths = NemoPaths(RUN)
    generate = jobs.generate_command(loaded, paths).overrides
    finetune = jobs.finetune_command(loaded, paths).overrides
    log_dir = next(o.split("=", 1)[1] for o in finetune if o.startswith("exp_manager.explicit_log_dir="))
    name = next(o.split("=", 1)[1] for o in finetune if o.startswith("name="))
    assert f"model.peft.restore_from_path={log_dir}/checkpoints/{name}.nemo" in generate
    base = next(o for o in finetune if o.startswith("model.restore_from_path="))
    assert base in generate
