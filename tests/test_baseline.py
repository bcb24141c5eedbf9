"""The base model scored beside the adapter, and an adapter that changes nothing failing loudly."""

from __future__ import annotations

import json
from pathlib import Path

from peftpipe.engines.hf import command
from peftpipe.evaluation import comparison_rows, with_baseline
from tests.conftest import TINY_REPO_ID
from tests.test_hf_engine import make_run, run_script


def test_an_adapter_that_changes_nothing_fails_the_evaluation(tmp_path: Path, hub_root: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths, _, generation = make_run(tmp_path, hub_root)
    # A freshly initialised LoRA has B = 0: loaded and "applied", it changes no output at all,
    # which is what a wrong target module list or a failed load looks like from outside.
    base = AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(paths.adapter_dir)
    generation.update(max_records=3)
    result = run_script(command.GENERATE_MODULE, generation, paths.stage_config("evaluate"))
    assert result.returncode != 0
    assert "changed no prediction and not the loss" in result.stderr + result.stdout
    assert "it is not applied" in result.stderr + result.stdout


def test_base_vs_adapter_rows_carry_the_delta() -> None:
    metrics = with_baseline({"records": 4, "f1": 0.75, "exact_match": 0.5, "loss": 1.25},
                            {"records": 4, "f1": 0.25, "exact_match": 0.0, "loss": 3.5})
    assert metrics["delta"] == {"f1": 0.5, "exact_match": 0.5, "loss": -2.25}
    assert comparison_rows(metrics)[0] == {"metric": "f1", "base model": 0.25, "adapter": 0.75, "delta": "+0.5000"}
    assert comparison_rows({"records": 4, "f1": 0.75}) == []
