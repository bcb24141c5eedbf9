"""`peftpipe validate` against the model itself: target modules, families an engine cannot run, the
OpenCALM-3B example of the guide and the preflight's choice for it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from tests.conftest import REPO

runner = CliRunner()
OPENCALM = REPO / "examples" / "opencalm-3b-jsquad"
V100_GIB = 32e9 / 2**30


def validate(spec: Path, *changes: str) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", str(spec), *[arg for change in changes for arg in ("--set", change)]])
    return result.exit_code, " ".join(result.output.split())


def test_opencalm_example_validates_and_its_preflight_fits_a_v100() -> None:
    from peftpipe.memory_ladder import MemoryRungs
    from peftpipe.preflight import choose_micro_batch, memory_estimator
    from peftpipe.validation import load_spec

    code, output = validate(OPENCALM / "spec.yaml")
    assert code == 0, output
    loaded = load_spec(OPENCALM / "spec.yaml")
    config = json.loads((OPENCALM / "model" / "config.json").read_text())
    chosen = choose_micro_batch(loaded.spec, config, V100_GIB)
    # The largest divisor of 64 up to 16 whose estimate fits 85 % of 32 GB less the CUDA context.
    assert chosen.fits and chosen.micro_batch_size == 8 and chosen.memory == MemoryRungs()  # no rung needed
    assert memory_estimator(loaded.spec, config)(16, MemoryRungs()) > chosen.budget_gib
    assert "lowered from 16 to 8" in chosen.describe()


def test_opencalm_example_renders_a_singularity_job(tmp_path: Path) -> None:
    result = runner.invoke(app, ["render", str(OPENCALM / "spec.yaml"), "--stage", "finetune"])
    assert result.exit_code == 0, result.output
    assert "singularity exec --nv" in result.output and "--gres=gpu:v100:1" in result.output
    assert "python -m peftpipe.engines.hf.train" in result.output


@pytest.mark.parametrize(("changes", "expected"), [
    (("peft.lora.target_modules=[q_proj,v_proj]",),
     "peft.lora.target_modules: ['q_proj', 'v_proj'] match no module of GPTNeoXForCausalLM (gpt_neox), whose"
     " attention and MLP projections are query_key_value, dense, dense_h_to_4h, dense_4h_to_h"),
    (("peft.method=ia3", "peft.ia3.target_modules=[k_proj,v_proj,down_proj]", "peft.ia3.feedforward_modules=[down_proj]"),
     "peft.ia3.target_modules: ['k_proj', 'v_proj', 'down_proj'] match no module of GPTNeoXForCausalLM"),
])
def test_target_modules_the_model_lacks_are_refused(changes: tuple[str, ...], expected: str) -> None:
    code, output = validate(OPENCALM / "spec.yaml", *changes)
    assert code == 2
    assert expected in output and "Fix: use auto, or names from: query_key_value" in output


def test_dotted_and_auto_targets_are_accepted() -> None:
    assert validate(OPENCALM / "spec.yaml", "peft.lora.target_modules=[attention.query_key_value,mlp.dense_4h_to_h]")[0] == 0
    assert validate(OPENCALM / "spec.yaml", "peft.lora.target_modules=auto")[0] == 0


def test_the_legacy_nemo_engine_refuses_gpt_neox_in_validate() -> None:
    code, output = validate(OPENCALM / "spec.yaml", "engine=nemo", "nemo.profile=24.07", "train.lr_schedule=cosine",
                            "peft.lora.target_modules=[attention_qkv]",
                            "execution.slurm.container.image=/shared/containers/nemo-24.07.sif")
    assert code == 2
    assert "model: GPTNeoXForCausalLM has no HF -> .nemo converter in NeMo" in output


def test_a_model_transformers_cannot_build_as_a_causal_lm_is_refused(tmp_path: Path) -> None:
    spec_dir = tmp_path / "example"
    shutil.copytree(OPENCALM, spec_dir)
    (spec_dir / "model" / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 64}))
    code, output = validate(spec_dir / "spec.yaml")
    assert code == 2
    assert "model: is not supported by the hf engine: 't5' has no causal-LM class in transformers" in output


def test_tiny_model_builds_any_family_and_refuses_unknown_ones(tmp_path: Path) -> None:
    corpus = REPO / "examples" / "tiny" / "squad_tiny.json"
    built = runner.invoke(app, ["tiny-model", str(tmp_path / "neox"), "--corpus", str(corpus), "--family", "gpt_neox"])
    assert built.exit_code == 0, built.output
    assert json.loads((tmp_path / "neox" / "config.json").read_text())["model_type"] == "gpt_neox"
    unknown = runner.invoke(app, ["tiny-model", str(tmp_path / "x"), "--corpus", str(corpus), "--family", "bert"])
    assert unknown.exit_code == 2 and "unknown family 'bert'" in unknown.output
