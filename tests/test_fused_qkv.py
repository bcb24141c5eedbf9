"""GPT-NeoX's fused query_key_value split (``fused_qkv``) and the 16-bit LayerNorm under autocast give
peft's loss and adapter gradients (CPU)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from peftpipe.engines.hf.fast_kernels import StorageDtypeLayerNorm, keep_layer_norms_in_storage_dtype
from peftpipe.engines.hf.fused_projections import fuse_projections
from peftpipe.engines.hf.fused_qkv import SplitHeads, install_split_heads
from peftpipe.engines.hf.modeling import prepare_model
from tests.test_fused_projections import batch, close, count_nodes, loss_and_grads

CPU = torch.device("cpu")
LAYERS = 3
NEOX_LORA = {"method": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["query_key_value", "dense"]}


def tiny_neox(rotary: float):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(hidden_size=64, num_hidden_layers=LAYERS, vocab_size=256, num_attention_heads=4,
                           intermediate_size=128, rotary_pct=rotary, max_position_embeddings=64)
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config)


def neox_pair(rotary: float):
    """peft's own forward, and the engine's (fused projections, the split, the LayerNorm)."""
    plain = prepare_model(tiny_neox(rotary), NEOX_LORA, CPU, activation_checkpointing=False, fuse=False)
    with torch.no_grad():
        for name, parameter in plain.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    engine = copy.deepcopy(plain)
    fuse_projections(engine.model)
    assert install_split_heads(engine.model) == LAYERS
    return plain, engine


@pytest.mark.parametrize("rotary", [1.0, 0.25], ids=["full-rotary", "partial-rotary"])
def test_split_heads_matches_peft_in_loss_and_every_gradient(rotary):
    plain, engine = neox_pair(rotary)
    data = batch()
    plain_loss, plain_grads, _ = loss_and_grads(plain, data)
    engine.model.zero_grad(set_to_none=True)
    from peftpipe.engines.hf.modeling import loss_sum

    loss = loss_sum(engine.model, data, engine.head_weight, use_liger=False)
    assert count_nodes(loss.grad_fn, SplitHeads.__name__ + "Backward") == LAYERS  # the new path really ran
    loss.backward()
    assert torch.allclose(loss.detach(), plain_loss, rtol=1e-6)
    engine_grads = {n: p.grad for n, p in engine.model.named_parameters() if p.requires_grad}
    assert engine_grads.keys() == plain_grads.keys() and len(plain_grads) == 4 * LAYERS
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name
        assert close(engine_grads[name], grad), name


def test_split_heads_survives_copies_and_pickles():
    _, engine = neox_pair(1.0)
    data = batch()
    expected, _, _ = loss_and_grads(engine, data)
    for clone in (copy.deepcopy(engine), pickle.loads(pickle.dumps(engine))):
        attention = clone.model.base_model.model.gpt_neox.layers[0].attention
        assert attention.forward.module is attention  # the copy computes with its own weights
        assert torch.allclose(loss_and_grads(clone, data)[0], expected)


def test_gradients_of_the_split_against_finite_differences():
    qkv = torch.randn(2, 5, 2 * 3 * 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: SplitHeads.apply(x, 2), (qkv,))
    # One output unused (no gradient reaches it): its third of the gradient is zero, as under chunk.
    q, _, v = SplitHeads.apply(qkv, 2)
    (q.sum() + 2 * v.sum()).backward()
    expected = torch.cat([torch.ones(2, 5, 2, 3), torch.zeros(2, 5, 2, 3), 2 * torch.ones(2, 5, 2, 3)], dim=-1)
    assert torch.equal(qkv.grad.view(2, 5, 2, 9), expected.double())


def test_layer_norm_stays_in_bf16_under_autocast_and_matches_the_bf16_model():
    norm = torch.nn.LayerNorm(64).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_(1, 0.1), norm.bias.normal_(0, 0.1)
    x = torch.randn(4, 64, dtype=torch.bfloat16, requires_grad=True)
    expected = torch.nn.functional.layer_norm(x, (64,), norm.weight, norm.bias)  # no autocast: bf16
    (expected * torch.arange(64)).sum().backward()
    expected_grad, x.grad = x.grad, None
    assert keep_layer_norms_in_storage_dtype(torch.nn.Sequential(norm)) == 1
    assert type(norm) is StorageDtypeLayerNorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    (out * torch.arange(64)).sum().backward()
    assert torch.equal(x.grad, expected_grad)


def test_engine_on_a_bf16_neox_under_autocast_is_as_accurate_as_peft():
    """The engine's GPU set-up (bf16 base, autocast, fp32 adapters, bf16 LayerNorm) against peft's (fp32 LayerNorm)."""
    plain, engine = neox_pair(0.25)
    keep_layer_norms_in_storage_dtype(engine.model)
    data = batch()
    _, reference, _ = loss_and_grads(plain, data)  # fp32 throughout
    for prepared in (plain, engine):
        for name, parameter in prepared.model.named_parameters():
            if "lora_" not in name:
                parameter.data = parameter.data.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, plain_grads, _ = loss_and_grads(plain, data)
        _, engine_grads, _ = loss_and_grads(engine, data)
    for name, exact in reference.items():
        peft_error = (plain_grads[name].float() - exact).norm() / exact.norm()
        engine_error = (engine_grads[name] - exact).norm() / exact.norm()
        assert peft_error < 0.1, name
        assert engine_error <= 1.25 * peft_error + 1e-2, name
