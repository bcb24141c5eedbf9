"""The nemo engine's pure parts: converter choice and argv, sizes, Hydra quoting, checkpoint cleanup,
predictions, spec validation and the render command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from peftpipe.engines.nemo import convert
from peftpipe.engines.nemo.checkpoints import Entry, clear_stale_checkpoints, plan_cleanup
from peftpipe.engines.nemo.finetune import lora_target_modules, nemo_prompt_template
from peftpipe.engines.nemo.generate import read_nemo_predictions, read_test_loss
from peftpipe.engines.nemo.overrides import override
from peftpipe.engines.nemo.profiles import PROFILES
from peftpipe.validation import SpecError
from tests.nemo_cases import LLAMA, MISTRAL, hf_config, load

LLAMA2 = hf_config(LLAMA)
MISTRAL7B = hf_config(MISTRAL)
MIXTRAL = {**MISTRAL7B, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_local_experts": 8}
GEMMA_2B = {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_size": 2048, "num_hidden_layers": 18,
            "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "intermediate_size": 16384,
            "vocab_size": 256000}
LLAMA31 = {**LLAMA2, "vocab_size": 128256, "num_key_value_heads": 8, "intermediate_size": 14336,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}


@pytest.mark.parametrize("config, billions", [(LLAMA2, 6.74), (MISTRAL7B, 7.24), (MIXTRAL, 46.70), (GEMMA_2B, 2.51),
                                              (LLAMA31, 8.03)])
def test_parameter_count_from_config(config: dict, billions: float) -> None:
    assert convert.parameter_count(config) / 1e9 == pytest.approx(billions, rel=0.005)


def test_host_memory_estimate_covers_an_fp32_load_plus_the_nemo_copy() -> None:
    gib = convert.host_memory_gib(LLAMA2)
    assert 4 * 6.74e9 / 2**30 * 2 < gib < 100  # both fp32 copies fit; not an absurd request


@pytest.mark.parametrize("config, name", [(LLAMA2, "llama"), (MISTRAL7B, "mistral_7b"), (MIXTRAL, "mixtral"),
                                          (GEMMA_2B, "gemma"), ({"model_type": "RefinedWebModel"}, "falcon"),
                                          ({"architectures": ["GPTBigCodeForCausalLM"]}, "starcoder")])
def test_converter_from_architectures_or_model_type(config: dict, name: str) -> None:
    assert convert.converter_name(config) == name


def test_a_converter_the_container_lacks_names_the_profiles_that_have_it() -> None:
    qwen = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    with pytest.raises(SpecError, match="container 24.05 has no qwen2 converter") as error:
        convert.choose_converter(qwen, PROFILES["24.05"])
    issue, = error.value.issues
    assert issue.field == "nemo.profile" and "24.07" in issue.fix
    assert convert.choose_converter(qwen, PROFILES["24.07"]).name == "qwen2"


def test_gemma_gets_its_tokenizer_and_llama31_is_explicit_from_24_09() -> None:
    gemma = PROFILES["24.03"].converters["gemma"]
    argv = convert.converter_argv(gemma, Path("/m/gemma-2b"), Path("/r/base.nemo"), "bf16", GEMMA_2B)
    assert argv[-2:] == ["--tokenizer_path", "/m/gemma-2b/tokenizer.model"]
    llama = PROFILES["24.09"].converters["llama"]
    assert convert.converter_argv(llama, Path("/m"), Path("/o"), "bf16", LLAMA31)[-1] == "--llama31=True"
    assert convert.converter_argv(llama, Path("/m"), Path("/o"), "bf16", LLAMA2)[-1] == "--llama31="
    with pytest.raises(SpecError, match="16 is not accepted by the gemma converter"):
        convert.converter_argv(gemma, Path("/m"), Path("/o"), "16", GEMMA_2B)


def test_cpu_bf16_caveat_only_where_the_converter_falls_back() -> None:
    llama = PROFILES["24.03"].converters["llama"]
    assert "writes fp16, not bf16" in convert.precision_caveat(llama, "bf16", gpus=0)
    assert convert.precision_caveat(llama, "bf16", gpus=1) is None
    assert convert.precision_caveat(llama, "16", gpus=0) is None
    assert convert.precision_caveat(PROFILES["24.03"].converters["falcon"], "bf16", gpus=0) is None


@pytest.mark.parametrize("template", ["{input}\nAnswer: {output}", 'Q: "{input}"\tA: {output}',
                                      "path C:\\data\\ {input} \\\" {output}", "文章：{input}\n答え：{output}"])
def test_prompt_template_survives_hydra_and_nemos_unescaping(template: str) -> None:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"prompt_template": None})
    line = override("prompt_template", nemo_prompt_template(template))
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides([line]), cfg)
    # gpt_sft_dataset.py: self.prompt_template.encode('utf-8').decode('unicode_escape')
    assert cfg.prompt_template.encode("utf-8").decode("unicode_escape") == template


def test_lora_targets_map_hf_names_to_nemos_fused_modules() -> None:
    assert lora_target_modules(["q_proj", "k_proj", "v_proj", "o_proj"]) == ["attention_qkv", "attention_dense"]
    assert lora_target_modules(["down_proj", "gate_proj", "up_proj"]) == ["mlp_fc1", "mlp_fc2"]
    assert lora_target_modules(["all"]) == ["all"]
    with pytest.raises(SpecError, match="without \\['k_proj'\\]"):
        lora_target_modules(["q_proj", "v_proj"])
    with pytest.raises(SpecError, match="exit 1"):
        lora_target_modules(["lm_head"])


STEM = "megatron_gpt_peft_lora_tuning--validation_loss="


def test_cleanup_keeps_the_newest_finished_last_checkpoint() -> None:
    entries = [Entry(f"{STEM}0.9-step=100-consumed_samples=3200.0-last.ckpt"),
               Entry(f"{STEM}0.8-step=200-consumed_samples=6400.0-last.ckpt"),
               Entry(f"{STEM}0.8-step=200-consumed_samples=6400.0.ckpt"),
               Entry(f"{STEM}0.7-step=300-consumed_samples=9600.0-last.ckpt"),
               Entry(f"{STEM}0.7-step=300-consumed_samples=9600.0-last-unfinished"),
               Entry("megatron_gpt_peft_lora_tuning.nemo")]
    plan = plan_cleanup(entries)
    assert plan.keep == f"{STEM}0.8-step=200-consumed_samples=6400.0-last"
    assert sorted(plan.remove) == sorted([f"{STEM}0.7-step=300-consumed_samples=9600.0-last.ckpt",
                                          f"{STEM}0.7-step=300-consumed_samples=9600.0-last-unfinished",
                                          f"{STEM}0.9-step=100-consumed_samples=3200.0-last.ckpt"])


def test_cleanup_groups_model_parallel_rank_files_and_distributed_directories() -> None:
    old, new = f"{STEM}0.9-step=100-consumed_samples=3200.0-last", f"{STEM}0.8-step=200-consumed_samples=6400.0-last"
    ranks = [Entry(f"mp_rank_0{r}/{name}.ckpt") for r in (0, 1) for name in (old, new)]
    assert plan_cleanup(ranks).remove == (f"mp_rank_00/{old}.ckpt", f"mp_rank_01/{old}.ckpt")
    dist = [Entry(old, is_dir=True), Entry(new, is_dir=True)]
    assert plan_cleanup(dist).remove == (old,)
    assert plan_cleanup([Entry(f"{new}.ckpt")]).remove == ()


def test_cleanup_applies_to_a_directory(tmp_path: Path) -> None:
    for name in (f"{STEM}0.9-step=100-consumed_samples=3200.0-last.ckpt",
                 f"{STEM}0.8-step=200-consumed_samples=6400.0-last.ckpt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "mp_rank_00").mkdir()
    (tmp_path / "mp_rank_00" / f"{STEM}0.5-step=50-consumed_samples=1600.0-last.ckpt").write_text("x")
    clear_stale_checkpoints(tmp_path)
    assert [p.name for p in tmp_path.rglob("*.ckpt")] == [f"{STEM}0.8-step=200-consumed_samples=6400.0-last.ckpt"]
    assert clear_stale_checkpoints(tmp_path / "missing").keep is None


def test_predictions_file_needs_nemo_1_keys(tmp_path: Path) -> None:
    path = tmp_path / "p_test_test_inputs_preds_labels.jsonl"
    path.write_text(json.dumps({"input": "q", "prediction": "a", "label": "a"}) + "\n")
    with pytest.raises(ValueError, match="lacks \\['pred'\\]"):
        read_nemo_predictions(path)
    with pytest.raises(FileNotFoundError, match="write_predictions_to_file=True"):
        read_nemo_predictions(tmp_path / "missing.jsonl")
    assert read_test_loss("│        test_loss        │    1.25    │\n") == 1.25
    assert read_test_loss("no table") is None


def issues(spec: Path, changes: dict) -> list[str]:
    with pytest.raises(SpecError) as error:
        load(spec, changes)
    return [str(issue) for issue in error.value.issues]


@pytest.mark.parametrize("changes, expected", [
    ({"train.precision": "bf16"}, "train.precision: bf16 on v100 (compute capability 7.0) is emulated"),
    ({"train.precision": "auto", "execution.slurm.gpu_type": None}, "train.precision: auto cannot choose"),
    ({"nemo.tensor_parallel_size": 3, "train.devices": 3}, "3 does not divide the model's 32 attention heads"),
    ({"nemo.tensor_parallel_size": 8}, "does not divide the 4 GPUs"),
    ({"nemo.tensor_parallel_size": 2, "train.global_batch_size": 12}, "12 is not divisible by micro_batch_size 4 x"
                                                                      " data-parallel 2"),
    ({"dataset.prompt_template": "{input} {output} "}, "{output} is the template's very last text"),
    ({"dataset.prompt_template": "{output}"}, "has no {input}"),
    ({"peft.lora.target_modules": ["q_proj", "v_proj"]}, "NeMo fuses them into one linear layer"),
    ({"execution.backend": "local"}, "execution.backend: the nemo engine runs NeMo's scripts in Slurm jobs"),
    ({"nemo.profile": None}, "nemo.profile: is required with engine nemo"),
    ({"nemo.convert.mem": "300G"}, "above execution.slurm.max_mem 180G"),
    ({"train.lr_schedule": "linear"}, "train.lr_schedule: linear is not rendered for NeMo"),
    ({"evaluation.max_records": 10}, "evaluation.max_records"),
    ({"nemo.layer_selection": [0, 33]}, "[0, 33] are not layers of this 32-layer model"),
])
def test_llama_seed_spec_issues(changes: dict, expected: str) -> None:
    found = issues(LLAMA, changes)
    assert any(expected in issue for issue in found), found


def test_container_specific_conversion_issues(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA31))
    found = issues(LLAMA, {"model.path": str(model)})
    assert any("accepts rope_scaling linear, not 'llama3'" in issue for issue in found)
    assert any("this looks like Llama 3" in issue for issue in found)
    assert load(LLAMA, {"model.path": str(model), "nemo.profile": "24.09"})
    (model / "config.json").write_text(json.dumps(MIXTRAL))
    found = issues(MISTRAL, {"model.path": str(model), "nemo.profile": "24.09", "nemo.convert.precision": 32})
    assert any("nemo.convert.precision: 32 is not accepted by container 24.09's mixtral" in i for i in found), found
    assert load(MISTRAL, {"model.path": str(model), "nemo.profile": "24.07", "nemo.convert.precision": 32})
    (model / "config.json").write_text(json.dumps(GEMMA_2B))
    found = issues(LLAMA, {"model.path": str(model), "nemo.tensor_parallel_size": 1, "nemo.convert.precision": 16})
    assert any("nemo.convert.gpus: the gemma converter" in issue for issue in found)
    assert any("16 is not accepted by container 24.03's gemma converter" in issue for issue in found)


def test_hf_engine_rejects_nemo_only_settings(tmp_path: Path) -> None:
    from tests.conftest import write_spec

    with pytest.raises(SpecError) as error:
        load(write_spec(tmp_path, {"peft.method": "adapter", "nemo.profile": "24.03"}))
    text = str(error.value)
    assert "peft.method: 'adapter' is not supported by engine 'hf'" in text
    assert "nemo: applies to engine nemo, not hf" in text


runner = CliRunner()


def test_render_json_is_the_command_exactly() -> None:
    result = runner.invoke(app, ["render", str(MISTRAL), "--stage", "finetune", "--json"])
    assert result.exit_code == 0, result.output
    command = json.loads(result.stdout)
    assert set(command) == {"profile", "stage", "script", "overrides"}
    assert command["script"] == "/opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py"
    assert "trainer.precision=bf16" in command["overrides"]
    convert_json = json.loads(runner.invoke(app, ["render", str(MISTRAL), "--stage", "convert", "--json"]).stdout)
    assert convert_json["argv"][:1] == ["--input_name_or_path"] and convert_json["stage"] == "convert"
    evaluate = json.loads(runner.invoke(app, ["render", str(MISTRAL), "--stage", "evaluate", "--json"]).stdout)
    assert evaluate["stage"] == "generate"


def test_render_batch_scripts_for_both_engines(tmp_path: Path) -> None:
    from tests.conftest import write_spec

    script = runner.invoke(app, ["render", str(LLAMA), "--stage", "evaluate"])
    assert script.exit_code == 0 and script.stdout.startswith("#!/bin/bash")
    assert "megatron_gpt_generate.py" in script.stdout and "singularity exec --nv" in script.stdout
    hf = write_spec(tmp_path, {"model": {"path": str(LLAMA.parent / "model")}}, drop=())
    hf_script = runner.invoke(app, ["render", str(hf), "--stage", "finetune"])
    assert hf_script.exit_code == 0, hf_script.output
    assert "-m peftpipe.engines.hf.train --config" in hf_script.stdout
    no_convert = runner.invoke(app, ["render", str(hf), "--stage", "convert"])
    assert no_convert.exit_code == 2 and "no convert stage" in no_convert.output


@pytest.mark.parametrize("image", ["nvcr.io#nvidia/nemo:25.02", "/shared/images/nemo-24.12.sif"])
def test_a_container_after_the_last_legacy_release_points_to_automodel(image: str) -> None:
    found = issues(LLAMA, {"execution.slurm.container.image": image})
    assert any(line.startswith(f"execution.slurm.container.image: {image} is NeMo Framework")
               and "Fix: fine-tune with engine: automodel" in line for line in found), found


def test_the_legacy_releases_pass_the_release_check() -> None:
    load(LLAMA, {"execution.slurm.container.image": "/shared/images/nemo-24.09.sif", "nemo.profile": "24.09"})
