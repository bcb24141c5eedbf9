"""The fused projections compute what peft's own forward computes: outputs, losses and every gradient (CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from peftpipe.engines.hf.fused_projections import ProjectionGroup, SharedInputProjections, fuse_projections
from peftpipe.engines.hf.modeling import loss_sum, prepare_model

CPU = torch.device("cpu")
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = QKVO + ["gate_proj", "up_proj", "down_proj"]
LAYERS = 3


def lora(targets: list[str]) -> dict:
    return {"method": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": targets}


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, num_hidden_layers=LAYERS, vocab_size=256, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def prepared_pair(peft: dict, checkpointing: bool = False):
    """The same model and adapters twice: peft's forward, and the fused one."""
    plain = prepare_model(tiny_llama(), peft, CPU, activation_checkpointing=checkpointing, fuse=False)
    with torch.no_grad():
        for name, parameter in plain.model.named_parameters():
            if "lora_B" in name:  # random B: adapters change the output, so a dropped branch shows
                parameter.normal_(0, 0.1)
    fused = copy.deepcopy(plain)
    fuse_projections(fused.model)
    return plain, fused


def batch(rows: int = 3, length: int = 24, seed: int = 1) -> dict:
    ids = torch.randint(0, 256, (rows, length), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(rows * length).remainder(length)
    keep = positions > 0
    flat = ids.reshape(-1)
    return {"input_ids": ids, "label_positions": (torch.nonzero(keep).squeeze(1) - 1),
            "label_targets": flat[keep]}


def loss_and_grads(prepared, data: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    prepared.model.zero_grad(set_to_none=True)
    loss = loss_sum(prepared.model, data, prepared.head_weight, use_liger=False)
    fused_nodes = count_nodes(loss.grad_fn, SharedInputProjections.__name__ + "Backward")
    loss.backward()
    grads = {n: p.grad.clone() for n, p in prepared.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, fused_nodes


def close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Equal up to float rounding of a different summation order, relative to the tensor's size."""
    return bool((actual - expected).norm() <= tolerance * expected.norm())


def count_nodes(root, name: str) -> int:
    seen, stack, found = set(), [root], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        found += name in type(node).__name__
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


@pytest.mark.parametrize(("targets", "nodes_per_layer"), [(QKVO, 3), (ALL_LINEAR, 4)],
                         ids=["lora-qkvo", "lora-all-linear"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "activation-checkpointing"])
def test_fused_lora_matches_peft_in_loss_and_every_gradient(targets, nodes_per_layer, checkpointing):
    plain, fused = prepared_pair(lora(targets), checkpointing)
    data = batch()
    plain_loss, plain_grads, plain_nodes = loss_and_grads(plain, data)
    fused_loss, fused_grads, fused_nodes = loss_and_grads(fused, data)

    # q/k/v as one node, gate/up as one, o (and down) on their own: the fast path really ran.
    assert (plain_nodes, fused_nodes) == (0, nodes_per_layer * LAYERS)
    assert torch.allclose(fused_loss, plain_loss, rtol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    assert len(plain_grads) == 2 * len(targets) * LAYERS
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name
        assert close(fused_grads[name], grad), name


def test_fused_lora_under_bf16_autocast_stays_close_to_peft():
    plain, fused = prepared_pair(lora(QKVO))
    data = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_loss, plain_grads, _ = loss_and_grads(plain, data)
        fused_loss, fused_grads, _ = loss_and_grads(fused, data)
    assert torch.allclose(fused_loss, plain_loss, rtol=1e-2)
    for name, grad in plain_grads.items():
        assert fused_grads[name].dtype == torch.float32  # the fp32 master weights get fp32 gradients
        assert close(fused_grads[name], grad, 0.05), name


def test_frozen_projections_of_ptuning_are_grouped_and_unchanged():
    peft = {"method": "ptuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16}
    plain, fused = prepared_pair(peft)
    data = batch()
    plain_loss, plain_grads, _ = loss_and_grads(plain, data)
    fused_loss, fused_grads, nodes = loss_and_grads(fused, data)
    assert nodes == 2 * LAYERS  # q/k/v and gate/up of each layer
    assert torch.allclose(fused_loss, plain_loss, rtol=1e-6)
    for name, grad in plain_grads.items():
        assert close(fused_grads[name], grad), name


def test_disabled_and_merged_adapters_give_peft_outputs():
    plain, fused = prepared_pair(lora(ALL_LINEAR))
    ids = batch()["input_ids"]
    with torch.no_grad():
        adapted = plain.model(input_ids=ids).logits
        with plain.model.disable_adapter():
            base_only = plain.model(input_ids=ids).logits
        assert not close(adapted, base_only, 1e-2)
        assert close(fused.model(input_ids=ids).logits, adapted)
        with fused.model.disable_adapter():
            assert close(fused.model(input_ids=ids).logits, base_only)
        fused.model.merge_adapter()
        assert close(fused.model(input_ids=ids).logits, adapted)
        with fused.model.disable_adapter():  # peft unmerges first; the fused path must let it
            assert close(fused.model(input_ids=ids).logits, base_only)


def test_a_member_called_with_another_input_computes_its_own_output():
    torch.manual_seed(0)
    q, k, v = (torch.nn.Linear(8, width, bias=True).requires_grad_(False) for width in (8, 4, 4))
    expected = {name: module.forward for name, module in zip("qkv", (q, k, v))}
    ProjectionGroup([q, k, v]).install()
    x, other = torch.randn(5, 8), torch.randn(5, 8)
    with torch.no_grad():
        assert close(q(x), expected["q"](x))
        # cross-attention style: k and v see another tensor than q did
        assert close(k(other), expected["k"](other))
        assert close(v(other), expected["v"](other))
        # and the usual order still pairs each output with its own module
        q(other)
        assert close(v(other), expected["v"](other))
        assert close(k(other), expected["k"](other))
