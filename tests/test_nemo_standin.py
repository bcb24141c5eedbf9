"""Rendered NeMo commands run against the stand-in, whose expectations table is independent of ours.

The stand-in (tests/nemo_standin/) accepts only what each container's real scripts accept and
writes NeMo-shaped outputs, so these tests show that a render would get past argparse, Hydra
and NeMo's start-up checks, and that the pipeline reads back what NeMo writes.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from peftpipe.engines.nemo import jobs, profiles
from peftpipe.engines.nemo.checkpoints import clear_stale_checkpoints
from peftpipe.engines.nemo.generate import evaluation_metrics
from peftpipe.engines.nemo.layout import NemoPaths
from peftpipe.engines.nemo.profiles import PROFILES, get_profile
from peftpipe.failures import FailureKind, diagnose
from peftpipe.paths import RunPaths
from peftpipe.retry import AttemptSettings, next_attempt
from tests.nemo_cases import LLAMA, MISTRAL, STANDIN_ROOT, hf_config, load, run_standin, write_data
from tests.nemo_standin import expectations as ex

FAST = {"train.max_steps": 9, "train.warmup_steps": 1, "train.checkpoint_every": 3, "nemo.root": str(STANDIN_ROOT)}


def model_config(nemo_file: Path) -> dict:
    with tarfile.open(nemo_file) as archive:
        return yaml.safe_load(archive.extractfile("./model_config.yaml").read())


def stage(loaded, paths: NemoPaths, name: str, spec: Path = LLAMA, **retry) -> jobs.NemoCommand:
    if name == "convert":
        return jobs.convert_command(loaded, paths, spec.parent / "model", hf_config(spec))
    if name == "finetune":
        return jobs.finetune_command(loaded, paths, **retry)
    return jobs.generate_command(loaded, paths)


def _objects(value, seen: set[int]) -> set[int]:
    """ids of every container and dataclass reachable from value (strings and numbers are interned)."""
    if isinstance(value, (str, int, float, bool, type(None))) or id(value) in seen:
        return seen
    seen.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            _objects(key, seen)
            _objects(item, seen)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            _objects(item, seen)
    elif dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            _objects(getattr(value, field.name), seen)
    return seen


def test_expectations_table_is_independent_of_the_renderers_table() -> None:
    ours = _objects(PROFILES, set())
    theirs = _objects({"c": ex.CONVERTERS, "p": ex.PEFT_SCHEMES, "f": {p: ex.finetune_keys(p) for p in ex.PROFILES},
                       "g": {p: ex.generate_keys(p) for p in ex.PROFILES}}, set())
    assert not ours & theirs
    for module in ("expectations.py", "config_keys_2403.py", "standin.py", "standin_train.py"):
        source = Path(ex.__file__).with_name(module).read_text()
        assert "from peftpipe" not in source and "import peftpipe" not in source, module


@pytest.mark.parametrize("profile", list(PROFILES))
def test_profile_converters_match_the_expectations(profile: str) -> None:
    """Both tables, read separately from NeMo's sources, agree on every converter's flags."""
    expected = ex.CONVERTERS[profile]
    for converter in PROFILES[profile].converters.values():
        args = expected[converter.script]
        assert converter.flag_names == {flag for arg in args for flag in arg.flags}, converter.name
        choices = next(arg.choices for arg in args if "--precision" in arg.flags)
        assert choices is None or set(converter.precisions) <= set(choices), converter.name
    assert set(expected) == {c.script for c in PROFILES[profile].converters.values()}


@pytest.mark.parametrize("spec", [LLAMA, MISTRAL], ids=["llama2-squad-24.03", "mistral-pubmedqa-24.07"])
def test_seed_workflow_runs_against_the_standin(tmp_path: Path, spec: Path) -> None:
    loaded = load(spec, FAST)
    profile = loaded.spec.nemo.profile
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    write_data(paths.run)
    env = {"NEMO_STANDIN_GPU": "8.0"} if loaded.spec.nemo.convert.gpus else {}
    for name in ("convert", "finetune", "evaluate"):
        result = run_standin(stage(loaded, paths, name, spec), profile, env)
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    adapter = model_config(paths.adapter_nemo("lora"))
    assert adapter["peft"]["peft_scheme"] == "lora"
    assert adapter["peft"]["lora_tuning"]["target_modules"] == (
        ["attention_qkv", "attention_dense"] if spec == LLAMA else ["attention_qkv", "attention_dense", "mlp_fc1",
                                                                     "mlp_fc2"])
    assert adapter["tensor_model_parallel_size"] == loaded.spec.nemo.tensor_parallel_size
    assert adapter["prompt_template_decoded"] == loaded.spec.dataset.prompt_template
    assert model_config(paths.converted_nemo)["precision"] == ("bf16" if spec == MISTRAL else 16)
    # Index files go to the run's index_mapping_dir, never next to the (possibly read-only) data.
    assert not list(paths.run.data_dir.glob("*.idx.*"))
    assert sorted(p.name for p in paths.train_index_dir.iterdir())[:2] == ["train.jsonl.idx.info",
                                                                          "train.jsonl.idx.npy"]
    log = run_standin(stage(loaded, paths, "evaluate", spec), profile).stdout
    metrics = evaluation_metrics(loaded.spec, get_profile(profile), paths, log)
    assert metrics["records"] == 6
    assert metrics["exact_match"] == pytest.approx(4 / 6) and metrics["exact_match_normalized"] == 1.0
    assert metrics["loss"] == pytest.approx(0.4321)
    assert metrics["generation"]["repetition_penalty"] == (1.2 if profile == "24.03" else 1.0)
    first = json.loads(paths.run.predictions_file.read_text().splitlines()[0])
    assert list(first)[:3] == ["input", "pred", "label"] and first["id"] == "test-0"


@pytest.mark.parametrize("method", ["lora", "ptuning", "adapter", "ia3"])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_scheme_is_accepted_by_every_profile(tmp_path: Path, profile: str, method: str) -> None:
    loaded = load(LLAMA, {**FAST, "nemo.profile": profile, "peft.method": method})
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    write_data(paths.run)
    for name in ("convert", "finetune", "evaluate"):
        result = run_standin(stage(loaded, paths, name), profile)
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    assert model_config(paths.adapter_nemo(method))["peft"]["peft_scheme"] == method


def test_launcher_style_converter_flags_are_rejected(tmp_path: Path) -> None:
    """NeMo-Launcher's --in-file/--out-file: what the 24.03 converter's argparse says to it."""
    command = stage(load(LLAMA, FAST), NemoPaths(RunPaths(tmp_path)), "convert")
    result = run_standin(command, "24.03", args=["--in-file", str(LLAMA.parent / "model"), "--out-file", "x.nemo"])
    assert result.returncode == 2
    assert "the following arguments are required: --input_name_or_path, --output_path" in result.stderr


def test_llama31_flag_exists_only_from_24_09(tmp_path: Path) -> None:
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    command = stage(load(LLAMA, {**FAST, "nemo.profile": "24.09"}), paths, "convert")
    assert command.argv[-1] == "--llama31="  # Llama 2: the only spelling argparse's type=bool reads as False
    assert run_standin(command, "24.09").returncode == 0
    assert model_config(paths.converted_nemo)["scale_positional_embedding"] is False
    rejected = run_standin(command, "24.03")
    assert rejected.returncode == 2 and "unrecognized arguments: --llama31=" in rejected.stderr


def test_cpu_conversion_writes_fp16_and_the_render_says_so(tmp_path: Path) -> None:
    loaded = load(MISTRAL, {**FAST, "nemo.convert.gpus": 0})
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    command = stage(loaded, paths, "convert", MISTRAL)
    assert "writes fp16, not bf16" in command.notes[0]
    result = run_standin(command, "24.07")
    assert "BF16 is not supported on this device. Using FP16 instead." in result.stdout
    assert model_config(paths.converted_nemo)["precision"] == "16"


@pytest.mark.parametrize("bad, message", [
    ("model.peft.lora_tuning.targets=[attention_qkv]", "Could not override 'model.peft.lora_tuning.targets'"),
    ("+trainer.devices=4", "Could not append to config. An item is already at 'trainer.devices'"),
    ("model.data.train_ds.prompt_template={input} {output}", "no viable alternative"),
    ("model.peft.peft_scheme=loha", "KeyError: 'loha'"),
])
def test_overrides_the_real_script_rejects_are_rejected(tmp_path: Path, bad: str, message: str) -> None:
    loaded = load(LLAMA, FAST)
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    write_data(paths.run)
    assert run_standin(stage(loaded, paths, "convert"), "24.03").returncode == 0
    command = stage(loaded, paths, "finetune")
    result = run_standin(command, "24.03", args=[*command.overrides, bad])
    assert result.returncode == 1 and message in result.stderr


def test_oom_then_retry_with_a_smaller_micro_batch_resumes(tmp_path: Path) -> None:
    loaded = load(LLAMA, FAST)
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    write_data(paths.run)
    assert run_standin(stage(loaded, paths, "convert"), "24.03").returncode == 0
    oom = {"NEMO_STANDIN_OOM_ABOVE_MICRO": "2"}
    first = run_standin(stage(loaded, paths, "finetune"), "24.03", oom)
    diagnosis = diagnose("FAILED", first.returncode, first.stdout + first.stderr)
    assert diagnosis.kind is FailureKind.GPU_OOM
    decision = next_attempt(diagnosis, AttemptSettings(1, 4), 32, data_parallel=1, max_attempts=4)
    assert decision.next.micro_batch_size == 2
    clear_stale_checkpoints(paths.checkpoints_dir)
    retry = run_standin(stage(loaded, paths, "finetune", micro_batch_size=2), "24.03", oom)
    assert retry.returncode == 0, retry.stderr
    assert paths.adapter_nemo("lora").is_file()


def test_killed_job_leaves_two_last_checkpoints_and_the_cleanup_lets_the_retry_resume(tmp_path: Path) -> None:
    loaded = load(LLAMA, FAST)
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    write_data(paths.run)
    assert run_standin(stage(loaded, paths, "convert"), "24.03").returncode == 0
    command = stage(loaded, paths, "finetune")
    killed = run_standin(command, "24.03", {"NEMO_STANDIN_KILL_AT_STEP": "6"})
    assert killed.returncode == 137
    assert len(list(paths.checkpoints_dir.glob("*-last.ckpt"))) == 2
    unprepared = run_standin(command, "24.03")
    assert unprepared.returncode == 1 and "that matches *last.ckpt." in unprepared.stderr
    plan = clear_stale_checkpoints(paths.checkpoints_dir)
    assert "step=6" in plan.keep and len(plan.remove) == 1
    resumed = run_standin(command, "24.03")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming training from checkpoint:" in resumed.stdout and "step=6" in resumed.stdout


def test_evaluation_with_another_tensor_parallel_size_is_refused(tmp_path: Path) -> None:
    loaded = load(LLAMA, FAST)
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    write_data(paths.run)
    for name in ("convert", "finetune"):
        assert run_standin(stage(loaded, paths, name), "24.03").returncode == 0
    other = load(LLAMA, {**FAST, "nemo.tensor_parallel_size": 2})
    result = run_standin(stage(other, paths, "evaluate"), "24.03")
    assert result.returncode == 1
    assert "PEFT evaluation tensor_model_parallel_size (2) must equal training tensor_model_parallel_size (4)" \
        in result.stderr


def test_renderer_tables_cite_their_commits() -> None:
    for profile in profiles.PROFILES.values():
        for converter in profile.converters.values():
            assert f"@{profile.commit} l." in converter.source
        assert all(profile.commit in source for source in profile.sources.values())


def test_activation_checkpointing_retry_is_accepted(tmp_path: Path) -> None:
    """The OOM policy's last step (micro batch 1 + activation checkpointing) renders keys NeMo declares."""
    loaded = load(LLAMA, FAST)
    paths = NemoPaths(RunPaths(tmp_path / "run"))
    write_data(paths.run)
    assert run_standin(stage(loaded, paths, "convert"), "24.03").returncode == 0
    command = stage(loaded, paths, "finetune", micro_batch_size=1, activation_checkpointing=True)
    assert "model.activations_checkpoint_granularity=full" in command.overrides
    result = run_standin(command, "24.03")
    assert result.returncode == 0, result.stderr
