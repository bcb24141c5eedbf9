"""`peftpipe validate`: every bad spec exits 2 naming the field and the fix; nothing starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from peftpipe.validation import SpecError, load_spec
from tests.conftest import EXAMPLE_SPEC, write_spec

runner = CliRunner()

BAD_SPECS = [
    pytest.param({"train.learning_rat": 0.1}, (), "train.learning_rat: unknown key",
                 "did you mean 'learning_rate'", id="unknown-key"),
    pytest.param({"train.max_steps": "many"}, (), "train.max_steps: expected a whole number, got 'many'",
                 "Fix: write a whole number", id="wrong-type"),
    pytest.param({"train.global_batch_size": 30, "train.micro_batch_size": 4}, (),
                 "train.global_batch_size: 30 is not divisible by micro_batch_size 4 x data-parallel 1",
                 "Fix: use a multiple of 4", id="batch-arithmetic"),
    pytest.param({"dataset.path": "missing.json"}, (), "dataset.path:", "does not exist. Fix: correct the path",
                 id="missing-file"),
    pytest.param({"peft.method": "adapter"}, (), "peft.method: 'adapter' is not supported by engine 'hf'",
                 "Fix: choose one of lora, ia3, ptuning", id="method-engine"),
    pytest.param({"train.max_steps": -5}, (), "train.max_steps: -5 is out of range", "Fix: use a value > 0",
                 id="negative-steps"),
    pytest.param({"dataset.prompt_template": "{output} is the answer to {input}"}, (),
                 "dataset.prompt_template: '{output} is the answer to {input}' must end with the label placeholder",
                 "Fix: move {output} to the end", id="template-output-not-last"),
    pytest.param({"model.path": "no/such/model"}, ("model.repo_id", "model.revision"), "model.path:",
                 "does not exist. Fix: point it at a model directory", id="unknown-model-path"),
    pytest.param({"engine": "deepspeed"}, (), "engine: 'deepspeed' is not one of", "Fix: use one of the listed values",
                 id="unknown-engine"),
    pytest.param({"peft.ia3.feedforward_modules": ["up_proj"], "peft.method": "ia3",
                  "peft.ia3.target_modules": ["k_proj", "v_proj", "down_proj"]}, (),
                 "peft.ia3.feedforward_modules: ['up_proj'] are not in target_modules", "Fix: add them",
                 id="ia3-feedforward-subset"),
    pytest.param({"peft.lora.target_modules": "all-linear"}, (),
                 "peft.lora.target_modules: 'all-linear' is neither auto nor a list of module names",
                 "Fix: write auto or [name, ...]", id="target-modules-string"),
]


@pytest.mark.parametrize(("changes", "drop", "problem", "fix"), BAD_SPECS)
def test_bad_spec_exits_2_naming_field_and_fix(tmp_path: Path, changes, drop, problem, fix) -> None:
    spec = write_spec(tmp_path, changes, drop)
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert problem in output
    assert fix in output


def test_invalid_spec_starts_nothing(tmp_path: Path) -> None:
    """`peftpipe run` on an invalid spec exits 2 before any run directory or flow exists."""
    spec = write_spec(tmp_path, {"train.global_batch_size": 30, "workdir": str(tmp_path / "runs")})
    completed = subprocess.run(
        [sys.executable, "-m", "peftpipe", "run", str(spec)], capture_output=True, text=True, cwd=tmp_path
    )
    assert completed.returncode == 2
    assert "train.global_batch_size: 30 is not divisible" in completed.stderr
    assert not (tmp_path / "runs").exists()
    assert "Flow run" not in completed.stdout + completed.stderr


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {"train.global_batch_size": 30, "peft.method": "adapter", "dataset.path": "gone.json"})
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert {issue.field for issue in caught.value.issues} == {"train.global_batch_size", "peft.method", "dataset.path"}


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    assert load_spec(spec, {"train.micro_batch_size": 2}).spec.train.micro_batch_size == 2
    result = runner.invoke(app, ["validate", str(spec), "--set", "train.micro_batch_size=3"])
    assert result.exit_code == 2
    assert "not divisible by micro_batch_size 3" in result.output


def test_example_specs_are_valid() -> None:
    for spec in sorted((EXAMPLE_SPEC.parents[1]).rglob("*.yaml")):
        result = runner.invoke(app, ["validate", str(spec)])
        assert result.exit_code == 0, f"{spec}: {result.output}"
