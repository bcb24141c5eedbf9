"""The memory ladder: which rungs the preflight and the OOM retries turn on, in which order, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftpipe.attempts import first_attempt
from peftpipe.engines.hf import command
from peftpipe.failures import Diagnosis, FailureKind
from peftpipe.memory import ModelShape, estimate_memory
from peftpipe.engines import ladder_for
from peftpipe.memory_ladder import MemoryLadder, MemoryRungs
from peftpipe.paths import RunPaths
from peftpipe.preflight import choose_micro_batch
from peftpipe.retry import AttemptSettings, next_attempt
from peftpipe.spec_issues import SpecError
from peftpipe.validation import load_spec
from tests.conftest import write_spec

OOM = Diagnosis(FailureKind.GPU_OOM, "torch.OutOfMemoryError: CUDA out of memory.")
LLAMA_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
LLAMA_1B = dict(LLAMA_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, tie_word_embeddings=True)
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


def spec(tmp_path: Path, **changes: object):
    return load_spec(write_spec(tmp_path, {"train.max_seq_length": 2048, "peft.lora.target_modules": QKVO,
                                           **changes})).spec


def walk(ladder: MemoryLadder, settings: AttemptSettings, global_batch: int = 8) -> list[tuple[int, str, str]]:
    """Every attempt a run of OOMs goes through: (micro batch, rungs, the policy's reason)."""
    seen = []
    while True:
        decision = next_attempt(OOM, settings, global_batch, 1, max_attempts=20, ladder=ladder)
        seen.append((settings.micro_batch_size, settings.memory.describe(), decision.reason))
        if decision.next is None:
            return seen
        settings = decision.next


def test_the_hf_engine_walks_micro_batch_then_checkpointing_offload_and_4bit(tmp_path: Path) -> None:
    ladder = ladder_for(spec(tmp_path))
    assert ladder.steps == ("checkpointing", "offload", "quantize_base")
    assert ladder.unavailable == {"shard": "needs train.devices > 1"}
    seen = walk(ladder, AttemptSettings(1, 4))
    assert [(mbs, rungs) for mbs, rungs, _ in seen] == [
        (4, "none"), (2, "none"), (1, "none"), (1, "checkpointing"), (1, "checkpointing + offload"),
        (1, "checkpointing + offload + quantize_base")]
    assert "next rung: 4-bit base weights (QLoRA)" in seen[4][2]
    assert "next rung: activation checkpointing" in seen[2][2]
    assert "next rung: checkpointed activations offloaded to pinned host memory" in seen[3][2]
    assert "top of the memory ladder" in seen[-1][2] and "shard: needs train.devices > 1" in seen[-1][2]


def test_a_forbidden_rung_is_skipped_and_named(tmp_path: Path) -> None:
    ladder = ladder_for(spec(tmp_path, **{"train.memory": {"checkpointing": False, "quantize_base": False}}))
    assert ladder.steps == ()
    seen = walk(ladder, AttemptSettings(1, 1))
    assert len(seen) == 1 and "checkpointing: forbidden by train.memory" in seen[0][2]
    assert "offload: offload moves checkpointed activations, and checkpointing is forbidden" in seen[0][2]
    assert "quantize_base: forbidden by train.memory" in seen[0][2]


def test_pinned_rungs_start_the_first_attempt_and_reach_the_training_config(tmp_path: Path) -> None:
    pinned = spec(tmp_path, **{"train.memory": {"offload": True}})
    first = first_attempt(pinned)
    assert first.memory == MemoryRungs(checkpointing=True, offload=True)  # offload needs checkpointing
    config = command.training_config(pinned, tmp_path, RunPaths(tmp_path / "run"), first.micro_batch_size,
                                     first.activation_checkpointing, first.offload_activations)
    assert (config["activation_checkpointing"], config["offload_activations"]) == (True, True)
    # The older spelling pins checkpointing too; the ladder then adds offload and the 4-bit base.
    assert ladder_for(spec(tmp_path, **{"train.activation_checkpointing": True})).steps == ("offload", "quantize_base")


def test_with_several_gpus_the_hf_ladder_ends_with_sharding(tmp_path: Path) -> None:
    ladder = ladder_for(spec(tmp_path, **{"train.devices": 2}))
    assert [c.describe() for c in ladder.configurations()] == [
        "none", "checkpointing", "checkpointing + offload", "checkpointing + offload + shard"]
    assert ladder.unavailable["quantize_base"].startswith("not combined with sharding")
    seen = walk(ladder, AttemptSettings(1, 1), global_batch=8)
    assert "next rung: parameters sharded across the node's GPUs (FSDP2)" in seen[-2][2]
    settings = AttemptSettings(1, 1).with_memory(MemoryRungs(checkpointing=True, offload=True, shard=True))
    config = command.training_config(spec(tmp_path, **{"train.devices": 2}), tmp_path, RunPaths(tmp_path / "run"),
                                     1, settings.activation_checkpointing, settings.offload_activations, settings.shard)
    assert config["shard"] is True


def test_engines_without_offload_keep_the_old_ladder(tmp_path: Path) -> None:
    ladder = MemoryLadder.for_run("auto", False, 1, engine_rungs=("checkpointing",), engine="engine nemo")
    assert [c.describe() for c in ladder.configurations()] == ["none", "checkpointing"]
    assert ladder.unavailable["offload"] == "not implemented by engine nemo"


@pytest.mark.parametrize(("memory", "field", "problem"), [
    ({"quantize_base": True, "shard": True}, "train.memory.quantize_base", "not combined with sharding"),
    ({"shard": True}, "train.memory.shard", "sharding needs more than one GPU"),
    ({"offload": True, "checkpointing": False}, "train.memory.offload", "checkpointing is false"),
])
def test_impossible_pins_are_refused_naming_the_field(tmp_path: Path, memory: dict, field: str, problem: str) -> None:
    with pytest.raises(SpecError) as refused:
        spec(tmp_path, **{"train.memory": memory})
    assert any(issue.field == field and problem in issue.problem for issue in refused.value.issues)


def test_the_preflight_climbs_only_as_far_as_an_efficient_micro_batch_needs(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("peftpipe.preflight.kernels_for", lambda model_type: "fused")  # with or without Liger here
    run = spec(tmp_path, **{"train.global_batch_size": 32, "train.micro_batch_size": 32})
    roomy = choose_micro_batch(run, LLAMA_8B, 141.0)
    assert (roomy.memory.describe(), roomy.fits) == ("none", True) and roomy.micro_batch_size >= 8
    v100 = choose_micro_batch(run, LLAMA_8B, 32e9 / 2**30)  # 8B weights alone are 15 GiB of the 29.8
    assert (v100.memory.describe(), v100.micro_batch_size) == ("checkpointing", 8)
    assert v100.walked[0].startswith("rungs none: not even micro batch 1 fits")
    # 1B on a 6.5 GB GPU (the estimate without Liger, as in CI): checkpointing fits only micro batch 2 (4096
    # tokens); offload fits 4, which runs faster.
    small = choose_micro_batch(run, LLAMA_1B, 6.5e9 / 2**30)
    assert (small.memory.describe(), small.micro_batch_size) == ("checkpointing + offload", 4)
    assert "only micro batch 2 fits" in small.walked[1] and "trying the next rung" in small.walked[1]
    assert "memory rungs: checkpointing + offload" in small.describe()
    # 16 GiB: the 8B shape fits only with its base in 4 bits (5.7 GiB of NF4 weights instead of 15).
    tiny = choose_micro_batch(run, LLAMA_8B, 16.0)
    assert tiny.fits and tiny.memory.quantize_base and "+ 4-bit base weights (QLoRA)" in tiny.walked[-1]
    hopeless = choose_micro_batch(run, LLAMA_8B, 4.0)
    assert not hopeless.fits and "out of reach: shard: needs train.devices > 1" in hopeless.walked[-1]


# Peaks of the hf engine (Liger installed) on one H200, seq 2048, bf16, LoRA r16 q/k/v/o, one sitting
# (bench/RESULTS-ladder.md, bench/results/memory_ladder_h200.json): (shape, rung, micro batch, GiB).
H200_LADDER_PEAKS = [
    ("8b", "none", 8, 65.99), ("8b", "none", 16, 116.81), ("8b", "checkpointing", 1, 15.94),
    ("8b", "checkpointing", 4, 18.24), ("8b", "checkpointing", 16, 27.43), ("8b", "checkpointing", 32, 39.69),
    ("8b", "offload", 1, 15.52), ("8b", "offload", 4, 16.41), ("8b", "offload", 16, 19.98),
    ("8b", "offload", 32, 24.74), ("1b", "none", 8, 16.34), ("1b", "none", 16, 30.29), ("1b", "none", 32, 58.16),
    ("1b", "checkpointing", 1, 2.67), ("1b", "checkpointing", 8, 4.56), ("1b", "checkpointing", 32, 11.05),
    ("1b", "checkpointing", 64, 19.69), ("1b", "offload", 1, 2.58), ("1b", "offload", 8, 3.7),
    ("1b", "offload", 32, 7.56), ("1b", "offload", 64, 12.7),
]


@pytest.mark.parametrize(("shape", "rung", "micro_batch_size", "measured_gib"), H200_LADDER_PEAKS)
def test_every_rung_is_estimated_within_15_percent(shape: str, rung: str, micro_batch_size: int,
                                                   measured_gib: float) -> None:
    config = LLAMA_8B if shape == "8b" else LLAMA_1B
    estimate = estimate_memory(ModelShape.from_hf_config(config), 2048, micro_batch_size, kernels="liger",
                               target_modules=tuple(QKVO), activation_checkpointing=rung != "none",
                               offload_activations=rung == "offload")
    assert abs(estimate.total_gib / measured_gib - 1) <= 0.15
