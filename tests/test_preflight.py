"""The preflight memory check: the first attempt starts from a micro batch predicted to fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftpipe.memory_ladder import MemoryRungs
from peftpipe.preflight import choose_micro_batch, memory_estimator, preflight
from peftpipe.validation import load_spec
from tests.conftest import write_spec

LLAMA_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)
H100_GIB = 80e9 / 2**30


def spec_for(tmp_path: Path, **train: object):
    changes = {"train.max_seq_length": 2048, "peft.lora.r": 16,
               "peft.lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    changes.update({f"train.{key}": value for key, value in train.items()})
    return load_spec(write_spec(tmp_path, changes)).spec


def test_largest_divisor_that_fits_and_the_next_one_does_not(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, global_batch_size=48, micro_batch_size=48)
    result = choose_micro_batch(spec, LLAMA_1B, H100_GIB)
    assert result.fits and 48 % result.micro_batch_size == 0 and result.micro_batch_size < 48
    larger = min(d for d in range(result.micro_batch_size + 1, 49) if 48 % d == 0)
    assert memory_estimator(spec, LLAMA_1B)(larger, MemoryRungs()) > result.budget_gib >= result.estimate_gib


def test_the_users_micro_batch_is_an_upper_bound(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, global_batch_size=64, micro_batch_size=2)
    assert choose_micro_batch(spec, LLAMA_1B, H100_GIB).micro_batch_size == 2


def test_smaller_gpus_get_smaller_micro_batches(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, global_batch_size=64, micro_batch_size=64)
    chosen = [choose_micro_batch(spec, LLAMA_1B, gib).micro_batch_size for gib in (80, 40, 24)]
    assert chosen == sorted(chosen, reverse=True) and chosen[0] > chosen[-1]


def test_a_model_that_never_fits_says_so(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, global_batch_size=8, micro_batch_size=8)
    result = choose_micro_batch(spec, LLAMA_1B, 1.5)  # not even with every rung: the 4-bit base needs ~1 GiB
    assert (result.micro_batch_size, result.fits) == (1, False)
    assert "does NOT fit even at 1" in result.describe()


def test_activation_checkpointing_lowers_the_estimate(tmp_path: Path) -> None:
    estimate = memory_estimator(spec_for(tmp_path), LLAMA_1B)
    assert estimate(8, MemoryRungs(checkpointing=True)) < estimate(8, MemoryRungs())


def test_no_gpu_no_preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a CPU machine
    assert preflight(spec_for(tmp_path), LLAMA_1B) is None


# Peak memory of the hf engine (Liger installed) measured on one H100: Llama-3.2-1B shape, seq 2048
# (bench/results/train_throughput_h100.json).
H100_ENGINE_PEAKS = [
    ("lora", ("q_proj", "k_proj", "v_proj", "o_proj"), 8, 16.4), ("lora", ("q_proj", "k_proj", "v_proj", "o_proj"), 32, 58.2),
    ("lora", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 16, 40.3),
    ("ia3", ("k_proj", "v_proj", "down_proj"), 16, 47.6), ("ptuning", ("q_proj",), 32, 54.3),
]


@pytest.mark.parametrize(("method", "targets", "micro_batch_size", "measured_gib"), H100_ENGINE_PEAKS)
def test_estimate_within_15_percent_of_the_measured_engine(method, targets, micro_batch_size, measured_gib) -> None:
    from peftpipe.memory import ModelShape, estimate_memory

    estimate = estimate_memory(ModelShape.from_hf_config(LLAMA_1B), 2048, micro_batch_size, method=method,
                               kernels="liger", target_modules=targets).total_gib
    assert abs(estimate / measured_gib - 1) <= 0.15
