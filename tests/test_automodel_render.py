"""The automodel engine's rendered YAML (golden files per strategy and device) and its spec checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from peftpipe.engines.automodel.config import automodel_config, automodel_inputs, render_yaml
from peftpipe.paths import RunPaths
from peftpipe.spec import RunSpec
from peftpipe.validation import SpecError, load_spec
from tests.conftest import REPO, write_spec
from tests.golden_files import assert_matches_golden

RUN = RunPaths(Path("/scratch/peftpipe/runs/golden"))
MODEL = Path("/scratch/models/Llama-3.2-1B")
AUTOMODEL_VENV = REPO / ".venv-automodel"


def golden_spec(changes: dict[str, Any] | None = None) -> RunSpec:
    raw: dict[str, Any] = {
        "name": "golden", "model": {"path": str(MODEL)}, "dataset": {"format": "squad", "path": "squad.json"},
        "engine": "automodel",
        "peft": {"method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        "train": {"global_batch_size": 32, "micro_batch_size": 4, "max_steps": 500, "learning_rate": 1e-4,
                  "warmup_steps": 20, "lr_schedule": "cosine", "max_seq_length": 2048, "seed": 1234,
                  "checkpoint_every": 100, "devices": 4},
        "automodel": {"strategy": "fsdp2"},
    }
    for dotted, value in (changes or {}).items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return RunSpec.model_validate(raw)


def rendered(spec: RunSpec, **overrides: Any) -> str:
    return render_yaml(automodel_config(spec, automodel_inputs(RUN, MODEL), **overrides))


@pytest.mark.parametrize(("name", "changes"), [
    ("fsdp2_gpu_bf16", {}),
    ("ddp_gpu_bf16", {"automodel.strategy": "ddp"}),
    ("fsdp2_tp2_gpu", {"automodel.tensor_parallel_size": 2, "train.global_batch_size": 16}),
    ("fsdp2_cpu_fp32", {"automodel.device": "cpu", "automodel.rms_norm": "torch", "train.devices": 2}),
])
def test_yaml_matches_golden(name: str, changes: dict[str, Any]) -> None:
    assert_matches_golden(f"automodel/{name}.yaml", rendered(golden_spec(changes)))


def test_oom_retry_changes_only_local_batch_and_checkpointing() -> None:
    """A retry keeps the global batch: AutoModel accumulates global / (local x data-parallel) micro batches."""
    spec = golden_spec()
    first = automodel_config(spec, automodel_inputs(RUN, MODEL))
    retry = automodel_config(spec, automodel_inputs(RUN, MODEL), local_batch_size=2, activation_checkpointing=True)
    assert retry["step_scheduler"] == {**first["step_scheduler"], "local_batch_size": 2}
    assert retry["distributed"] == {**first["distributed"], "activation_checkpointing": True}
    assert {k: v for k, v in retry.items() if k not in ("step_scheduler", "distributed")} == \
        {k: v for k, v in first.items() if k not in ("step_scheduler", "distributed")}
    assert retry["checkpoint"]["checkpoint_dir"] == "/scratch/peftpipe/runs/golden/finetune/automodel"


def test_overrides_are_applied_last_and_parse_as_yaml() -> None:
    spec = golden_spec({"automodel.overrides": {"optimizer.betas": [0.9, 0.95], "step_scheduler.val_every_steps": 50}})
    config = yaml.safe_load(rendered(spec))
    assert config["optimizer"]["betas"] == [0.9, 0.95]
    assert config["step_scheduler"]["val_every_steps"] == 50
    assert config["peft"]["target_modules"] == ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj"]


# --- validation: one line per problem, naming the field and the fix ------------------------------------


def issues(tmp_path: Path, changes: dict[str, Any]) -> list[str]:
    spec = write_spec(tmp_path, {"engine": "automodel", "automodel.venv": str(AUTOMODEL_VENV),
                                 "automodel.device": "cpu", **changes})
    try:
        load_spec(spec)
    except SpecError as error:
        return [str(issue) for issue in error.issues]
    return []


def test_a_valid_automodel_spec_passes(tmp_path: Path) -> None:
    assert issues(tmp_path, {}) == []


@pytest.mark.parametrize(("changes", "expected"), [
    ({"train.global_batch_size": 12, "train.micro_batch_size": 8},
     "train.global_batch_size: 12 is not divisible by micro_batch_size 8 x data-parallel 1 (AutoModel's step"
     " scheduler refuses it). Fix: use a multiple of 8."),
    ({"train.devices": 4, "train.global_batch_size": 8, "train.micro_batch_size": 4,
      "automodel.tensor_parallel_size": 2, "automodel.strategy": "ddp"},
     "automodel.tensor_parallel_size: 2 needs strategy fsdp2 (DDP replicates whole layers). Fix: set"
     " automodel.strategy: fsdp2, or tensor_parallel_size: 1."),
    ({"train.precision": "fp16"}, "train.precision: fp16 is not a precision the automodel engine runs"),
    ({"dataset.prompt_template": "{input}\n{output}"}, "dataset.prompt_template: '{input}\\n{output}': AutoModel's"),
    ({"automodel.venv": "/nonexistent/venv"},
     "automodel.venv: /nonexistent/venv is not a virtual environment (no bin/python). Fix: create it with"
     " scripts/setup_automodel.sh"),
    ({"automodel.venv": None}, "automodel.venv: is required when AutoModel runs outside a container"),
    ({"peft.method": "ia3"}, "peft.method: 'ia3' is not supported by engine 'automodel'"),
    ({"automodel.overrides": {"not a key": 1}}, "automodel.overrides: 'not a key' is not a dotted config key."),
])
def test_each_problem_names_the_field_and_the_fix(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    found = issues(tmp_path, changes)
    assert any(line.startswith(expected) for line in found), found


def test_venv_with_another_automodel_version_is_refused(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / "lib" / "python3.11" / "site-packages" / "nemo_automodel-0.6.0.dist-info").mkdir(parents=True)
    assert issues(tmp_path / "spec", {"automodel.venv": str(venv)}) == [
        f"automodel.venv: {venv} holds nemo-automodel 0.6.0, not 0.7.0, the version the YAML is rendered for."
        " Fix: install nemo-automodel==0.7.0 there, or set automodel.version to a supported one."]


def test_lora_targets_must_exist_in_a_local_model(tmp_path: Path, hub_root: Path) -> None:
    """The core's target check applies to engine automodel too (AutoModel would adapt nothing there)."""
    model = hub_root / "peftpipe" / "tiny-llama"
    found = issues(tmp_path, {"model.path": str(model), "model.repo_id": None,
                              "peft.lora.target_modules": ["q_proj", "query_key_value"]})
    assert len(found) == 1 and found[0].startswith("peft.lora.target_modules: ['query_key_value'] match no module of")


def test_auto_targets_are_the_models_projections(hub_root: Path) -> None:
    model = hub_root / "peftpipe" / "tiny-llama"
    spec = golden_spec({"peft.lora.target_modules": "auto"})
    config = automodel_config(spec, automodel_inputs(RUN, model))
    assert config["peft"]["target_modules"] == [f"*.{name}" for name in
                                                ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj")]


def test_automodel_section_with_another_engine_is_refused(tmp_path: Path) -> None:
    assert issues(tmp_path, {"engine": "hf"}) == [
        "automodel: applies to engine automodel, not hf. Fix: remove it or set engine: automodel."]


# --- the fine-tune job per container runtime: what `peftpipe render` prints and the backends submit ------


@pytest.mark.parametrize(("runtime", "image"), [("none", None), ("singularity", "/shared/images/automodel-25.11.sif"),
                                                ("pyxis", "nvcr.io#nvidia/nemo-automodel:25.11")])
def test_finetune_job_per_container_runtime(runtime: str, image: str | None) -> None:
    from peftpipe.attempts import first_attempt
    from peftpipe.engines import engine_for
    from peftpipe.slurm.render import render_batch_script
    from peftpipe.spec import LoadedSpec

    changes = {"execution.backend": "slurm", "train.num_nodes": 2 if runtime == "pyxis" else 1,
               "execution.slurm.container": {"runtime": runtime, "image": image, "python": "python"}}
    if runtime == "none":
        changes["automodel.venv"] = "/shared/venvs/automodel-0.7.0"
    loaded = LoadedSpec(spec=golden_spec(changes), base_dir=Path("/scratch/specs"))
    command = engine_for("automodel").job(loaded, RUN, "finetune", first_attempt(loaded.spec), MODEL)
    # The launcher is run from peftpipe's own source tree, wherever this checkout is.
    script = render_batch_script(command.job).replace(str(REPO), "/opt/peftpipe")
    assert_matches_golden(f"automodel/finetune_{runtime}.sbatch", script)
    (config_file,) = command.shown
    assert command.files[config_file] == rendered(loaded.spec)
    assert command.described["config"] == automodel_config(loaded.spec, automodel_inputs(RUN, MODEL))
