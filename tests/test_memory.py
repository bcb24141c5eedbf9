"""The memory estimate used by the OOM preflight, against measured peaks and real parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftpipe.memory import GIB, ModelShape, estimate_memory, largest_micro_batch, trainable_parameters
from tests.conftest import TINY_REPO_ID

# Llama-3.2-1B's config.json fields (random weights were used for the measurements).
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "vocab_size": 128256, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 8192, "tie_word_embeddings": True}

# Peak torch.cuda.max_memory_allocated on one H100, seq 2048, bf16, LoRA r16 q/k/v/o
# (shared/reference/perf_reliability.md sections 1.2 and 9).
MEASURED_GIB = [
    ("plain", 1, 9.15),
    ("plain", 8, 56.4),
    ("fused", 8, 23.4),   # Liger kernels with the fused linear cross-entropy
    ("fused", 16, 44.3),
]


def test_llama_1b_shape_and_parameter_count() -> None:
    shape = ModelShape.from_hf_config(LLAMA_1B)
    assert shape.kv_size == 512
    assert shape.parameters == 1_235_814_400  # the published 1.24 B
    untied = ModelShape.from_hf_config({**LLAMA_1B, "tie_word_embeddings": False})
    assert untied.parameters - shape.parameters == 128256 * 2048


@pytest.mark.parametrize(("kernels", "micro_batch_size", "measured"), MEASURED_GIB)
def test_estimate_is_within_15_percent_of_measured_peaks(kernels: str, micro_batch_size: int, measured: float) -> None:
    estimate = estimate_memory(ModelShape.from_hf_config(LLAMA_1B), 2048, micro_batch_size, kernels=kernels)
    assert estimate.total_gib == pytest.approx(measured, rel=0.15)


def test_estimate_predicts_the_measured_out_of_memory() -> None:
    shape = ModelShape.from_hf_config(LLAMA_1B)
    h100 = 79 * GIB
    plain_limit = largest_micro_batch(shape, 2048, h100, kernels="plain")
    assert 8 <= plain_limit < 16  # measured: 8 runs, 16 runs out of memory
    assert largest_micro_batch(shape, 2048, h100, kernels="fused") >= 16


def test_estimate_moves_the_way_each_setting_should() -> None:
    shape = ModelShape.from_hf_config(LLAMA_1B)
    base = estimate_memory(shape, 2048, 4)
    assert estimate_memory(shape, 2048, 8).activations == pytest.approx(2 * base.activations)
    assert estimate_memory(shape, 2048, 4, activation_checkpointing=True).total < base.total / 2
    assert estimate_memory(shape, 2048, 4, precision="fp32").weights == 2 * base.weights
    assert estimate_memory(shape, 2048, 4, method="ia3").activations > base.activations
    assert estimate_memory(shape, 2048, 4, method="ptuning", num_virtual_tokens=20).activations > base.activations
    all_linear = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert estimate_memory(shape, 2048, 4, target_modules=all_linear).trainable_state > base.trainable_state
    with pytest.raises(ValueError, match="precision"):
        estimate_memory(shape, 2048, 4, precision="int3")


@pytest.mark.parametrize("method", ["lora", "lora-all", "ia3", "ptuning"])
def test_adapter_parameter_count_matches_peft(hub_root: Path, method: str) -> None:
    """Counted from the shape alone, the adapter size is what peft builds on the real (tiny) model."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peftpipe.engines.hf.modeling import peft_config

    model_dir = hub_root / TINY_REPO_ID
    shape = ModelShape.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    targets = {"lora": ["q_proj", "k_proj", "v_proj", "o_proj"],
               "lora-all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               "ia3": ["k_proj", "v_proj", "down_proj"], "ptuning": []}[method]
    settings = {"lora": {"method": "lora", "r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": targets},
                "ia3": {"method": "ia3", "target_modules": targets, "feedforward_modules": ["down_proj"]},
                "ptuning": {"method": "ptuning", "num_virtual_tokens": 10, "encoder_hidden_size": 32}}
    peft = settings[method.split("-")[0]]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), peft_config(peft))
    actual = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counted = trainable_parameters(shape, peft["method"], lora_rank=8, target_modules=tuple(targets),
                                   num_virtual_tokens=10, encoder_hidden_size=32)
    assert counted == actual
    assert shape.parameters == sum(p.numel() for p in model.base_model.parameters() if not p.requires_grad)


# Engine peaks on one H200 at seq 2048, bf16, from the model built on the meta device
# (bench/RESULTS-families.md): (config.json fields, method settings, kernels, micro batch, GiB).
OPENCALM_3B = {"model_type": "gpt_neox", "hidden_size": 2560, "num_hidden_layers": 32, "vocab_size": 52096,
               "num_attention_heads": 32, "intermediate_size": 10240, "rotary_pct": 1.0,
               "use_parallel_residual": True, "tie_word_embeddings": False}
RINNA_36B = {"model_type": "gpt_neox", "hidden_size": 2816, "num_hidden_layers": 36, "vocab_size": 32000,
             "num_attention_heads": 22, "intermediate_size": 11264, "rotary_pct": 1.0,
             "use_parallel_residual": False, "tie_word_embeddings": False}
QWEN2_15B = {"model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28, "vocab_size": 151936,
             "num_attention_heads": 12, "num_key_value_heads": 2, "intermediate_size": 8960,
             "tie_word_embeddings": True}
GEMMA2_2B = {"model_type": "gemma2", "hidden_size": 2304, "num_hidden_layers": 26, "vocab_size": 256000,
             "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 9216,
             "query_pre_attn_scalar": 256, "sliding_window": 4096}
NEOX_TARGETS = ("query_key_value", "dense")
QWEN_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MEASURED_FAMILIES = [
    pytest.param(OPENCALM_3B, NEOX_TARGETS, "fused", 8, 43.10, id="opencalm-3b-mbs8"),
    pytest.param(OPENCALM_3B, NEOX_TARGETS, "fused", 16, 80.86, id="opencalm-3b-mbs16"),
    pytest.param(RINNA_36B, NEOX_TARGETS, "fused", 8, 54.11, id="rinna-3.6b-mbs8"),
    pytest.param(RINNA_36B, NEOX_TARGETS, "fused", 16, 101.30, id="rinna-3.6b-mbs16"),
    pytest.param(QWEN2_15B, QWEN_ALL, "liger", 8, 34.82, id="qwen2-1.5b-mbs8"),
    pytest.param(QWEN2_15B, QWEN_ALL, "liger", 16, 66.53, id="qwen2-1.5b-mbs16"),
    pytest.param(GEMMA2_2B, QWEN_ALL[:4], "liger", 2, 26.04, id="gemma2-2b-mbs2"),
    pytest.param(GEMMA2_2B, QWEN_ALL[:4], "liger", 4, 47.04, id="gemma2-2b-mbs4"),
]


@pytest.mark.parametrize(("config", "targets", "kernels", "micro_batch_size", "measured"), MEASURED_FAMILIES)
def test_estimate_from_the_meta_model_is_within_15_percent_for_other_families(
        config: dict, targets: tuple, kernels: str, micro_batch_size: int, measured: float) -> None:
    from peftpipe.model_inspect import inspect_config

    shape = ModelShape.from_layout(inspect_config(config))
    estimate = estimate_memory(shape, 2048, micro_batch_size, kernels=kernels, target_modules=targets,
                               feedforward_modules=("down_proj",))
    assert estimate.total_gib == pytest.approx(measured, rel=0.15)
