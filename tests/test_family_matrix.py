"""The family matrix: a tiny random-weight model of every supported family, trained on CPU.

Each family's model is built from its own transformers config class (``peftpipe tiny-model
--family``) and served by the loopback Hub. Within the CI budget (5 minutes on 2 cores):

- the ``finetune`` flow (validate, fetch, prepare, LoRA with the target modules ``auto`` picks,
  evaluate, publish) for every family, and for GPT-NeoX and Gemma 2 a second flow run with the
  same run id that resumes from the run's checkpoint;
- for every family and every method (LoRA, IA3, p-tuning) the engine's own training and
  generation code, LoRA also resuming from its checkpoint (in this process: the stages around it
  do not depend on the family);
- packed rows give the loss of padded ones wherever packing stays on, and the memory estimate's
  parameter and adapter counts are what peft builds.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from peftpipe.tiny_model import FAMILIES, build_tiny_model, corpus_from_files
from tests.conftest import EXAMPLE_DATA, serve_mirror, write_spec

pytestmark = pytest.mark.e2e

# What `auto` must choose, read off each family's modules (transformers' own names).
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NEOX_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
AUTO_TARGETS = {
    **{family: LLAMA_TARGETS for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                            "stablelm", "qwen2_moe")},
    "phi3": ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"],
    "gpt_neox": NEOX_TARGETS,
    "falcon": NEOX_TARGETS,
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],  # its experts are no nn.Linear modules
}
# Every family through the whole flow (about 12 s each on 2 cores).
FLOW_FAMILIES = tuple(FAMILIES)
# The two families whose first run used to fail also resume through the flow.
RESUMED_BY_THE_FLOW = {"gpt_neox", "gemma2"}
# Families whose attention cannot keep packed records apart: packing is turned off with a message.
UNPACKED = {"falcon", "stablelm"}


def repo_id(family: str) -> str:
    return f"peftpipe/tiny-{family.replace('_', '-')}"


@pytest.fixture(scope="module")
def family_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Every family's tiny model under one loopback Hub mirror: (mirror root, endpoint)."""
    from peftpipe.hub.mirror import MirrorRoot

    root = tmp_path_factory.mktemp("family-hub")
    for family in FAMILIES:
        build_tiny_model(root / repo_id(family), corpus_from_files([EXAMPLE_DATA]), family=family)
    with serve_mirror(MirrorRoot(root)) as endpoint:
        yield root, endpoint


def small_run(tmp_path: Path, family: str, endpoint: str, drop: tuple[str, ...] = (), **changes: object) -> Path:
    return write_spec(tmp_path, {
        "model.repo_id": repo_id(family), "model.endpoint": endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
        "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{tmp_path / 'store'}",
        "peft.lora.target_modules": "auto", "train.max_steps": 2, "train.checkpoint_every": 2,
        "train.warmup_steps": 0, "train.global_batch_size": 4, "train.micro_batch_size": 2,
        "train.max_seq_length": 192, "evaluation.max_records": 4, "evaluation.tokens_to_generate": 4,
        "evaluation.batch_size": 4, **changes}, drop)


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_family_runs_the_whole_flow_and_resumes(tmp_path: Path, family_hub: tuple[Path, str], prefect_api,
                                                family: str) -> None:
    from flows.finetune import finetune

    spec = small_run(tmp_path, family, family_hub[1])
    first = finetune(spec_path=str(spec), run_id="matrix", return_state=True)
    assert first.is_completed(), first.result(raise_on_failure=False)
    summary = first.result()
    run_dir = Path(summary["run_dir"])

    layout = json.loads((run_dir / "model_layout.json").read_text())
    assert layout["model_type"] == family
    trained = json.loads((run_dir / "finetune" / "train_summary.json").read_text())
    assert trained["peft"]["target_modules"] == AUTO_TARGETS[family]
    log = (run_dir / "finetune" / "attempt-1" / "output.log").read_text()
    assert f"target modules (auto): {', '.join(AUTO_TARGETS[family])}" in log
    assert "fast paths:" in log
    assert ("packing is off" in log) == (family in UNPACKED)
    if family == "gemma2":
        assert "eager attention (soft-capped logits" in log
    predictions = (run_dir / "evaluate" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    assert summary["metrics"]["loss"] > 0
    manifest = json.loads((tmp_path / "store" / "matrix" / "manifest.json").read_text())
    keys = {obj["key"] for obj in manifest["objects"]}
    assert {"adapter/adapter_model.safetensors", "model_layout.json", "evaluate/metrics.json"} <= keys

    if family in RESUMED_BY_THE_FLOW:  # every family resumes in the engine-level test below
        again = finetune(spec_path=str(spec), run_id="matrix", max_steps=3, return_state=True)
        assert again.is_completed(), again.result(raise_on_failure=False)
        assert again.result()["train"]["resumed_from_step"] == 2
        assert again.result()["train"]["final_step"] == 3


@pytest.fixture
def own_signal_handlers() -> Iterator[None]:
    """The training script installs SIGTERM/SIGUSR1 handlers; give pytest its own back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("method", ["lora", "ia3", "ptuning"])
@pytest.mark.parametrize("family", FAMILIES)
def test_engine_trains_resumes_and_generates_for_every_family(tmp_path: Path, family_hub: tuple[Path, str],
                                                              own_signal_handlers: None, family: str,
                                                              method: str) -> None:
    """The engine's training and generation code on each family and method (in this process: no Hub, no
    flow); LoRA also resumes from its checkpoint when asked for more steps."""
    from peftpipe.data.prepare import prepare_dataset
    from peftpipe.engines.hf import command
    from peftpipe.engines.hf.generate import generate
    from peftpipe.engines.hf.train import train
    from peftpipe.paths import RunPaths
    from peftpipe.validation import load_spec

    model_dir = family_hub[0] / repo_id(family)
    spec = small_run(tmp_path, family, family_hub[1], ("model.repo_id", "model.revision", "model.endpoint",
                                                        "model.cache_dir"),
                     **{"peft.method": method, "model.path": str(model_dir)})
    loaded = load_spec(spec)
    paths = RunPaths(tmp_path / "run")
    prepare_dataset(loaded, paths.data_dir)
    config = command.training_config(loaded.spec, model_dir, paths)
    summary = train(config)
    assert summary["final_step"] == 2 and summary["trainable_parameters"] > 0
    adapter = json.loads((paths.adapter_dir / "adapter_config.json").read_text())
    assert adapter["peft_type"] == {"lora": "LORA", "ia3": "IA3", "ptuning": "P_TUNING"}[method]
    if method != "ptuning":
        assert sorted(adapter["target_modules"]) == sorted(summary["peft"]["target_modules"])
    if method == "lora":
        resumed = train({**config, "max_steps": 3})
        assert (resumed["resumed_from_step"], resumed["final_step"]) == (2, 3)
    generated = generate(command.generation_config(loaded.spec, model_dir, paths))
    assert generated["records"] == 4 and generated["loss"] > 0


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - UNPACKED))
def test_packed_rows_give_the_loss_of_padded_ones(family_hub: tuple[Path, str], family: str) -> None:
    """No token attends across the records that share a packed row, whatever the family's attention."""
    import torch

    from peftpipe.engines.hf.modeling import load_base_model, loss_sum, prepare_model
    from peftpipe.engines.hf.packing import collate

    base = load_base_model(str(family_hub[0] / repo_id(family)), "fp32", torch.device("cpu"))
    peft = {"method": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "auto"}
    prepared = prepare_model(base, peft, torch.device("cpu"), activation_checkpointing=False)
    assert prepared.packing_supported
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in (7, 12, 5):
        ids = torch.randint(3, base.config.vocab_size, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]})
    prepared.model.eval()
    with torch.no_grad():
        packed = loss_sum(prepared.model, collate(examples, [[0, 1, 2]], 0, torch.device("cpu"), packed=True),
                          prepared.head_weight, False)
        padded = loss_sum(prepared.model, collate(examples, [[0], [1], [2]], 0, torch.device("cpu"), packed=False),
                          prepared.head_weight, False)
    assert float(packed) == pytest.approx(float(padded), rel=1e-5)


def test_a_hub_model_is_checked_right_after_its_download(tmp_path: Path, family_hub: tuple[Path, str]) -> None:
    """validate cannot see a Hub model's modules before it is fetched; the fetch stage checks them before
    any data is prepared or job submitted."""
    from peftpipe.paths import RunPaths
    from peftpipe.stages import fetch_stage
    from peftpipe.validation import SpecError, load_spec

    spec = small_run(tmp_path, "gpt_neox", family_hub[1], **{"peft.lora.target_modules": ["q_proj", "v_proj"]})
    loaded = load_spec(spec)  # not in the cache yet: nothing to inspect
    paths = RunPaths(tmp_path / "runs" / "checked")
    with pytest.raises(SpecError) as error:
        fetch_stage(loaded, paths)
    assert "peft.lora.target_modules: ['q_proj', 'v_proj'] match no module of GPTNeoXForCausalLM" in str(error.value)
    assert not (paths.root / "data").exists() and not (paths.root / "finetune").exists()
    # Now in the cache, so validate itself says it.
    with pytest.raises(SpecError, match="match no module of GPTNeoXForCausalLM"):
        load_spec(spec)


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_estimate_counts_what_peft_builds(family_hub: tuple[Path, str], family: str) -> None:
    """The estimate's parameter and adapter counts, from the meta-device model, match the real model's."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peftpipe.model_inspect import inspect_model_dir
    from peftpipe.engines.hf.modeling import peft_config
    from peftpipe.memory import ModelShape, trainable_parameters
    from peftpipe.model_fit import resolved_peft

    model_dir = family_hub[0] / repo_id(family)
    layout = inspect_model_dir(model_dir)
    shape = ModelShape.from_layout(layout)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    assert shape.parameters == sum(p.numel() for p in base.parameters())
    for peft in ({"method": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "auto"},
                 {"method": "ia3", "target_modules": "auto", "feedforward_modules": "auto"}):
        peft = resolved_peft(peft, layout)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), peft_config(peft))
        counted = trainable_parameters(shape, peft["method"], lora_rank=4, target_modules=tuple(peft["target_modules"]),
                                       feedforward_modules=tuple(peft.get("feedforward_modules", ())))
        assert counted == sum(p.numel() for p in model.parameters() if p.requires_grad), peft
