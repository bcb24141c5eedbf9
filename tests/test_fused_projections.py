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


def with_bf16_base(prepared):
    """The engine's GPU set-up: bf16 base weights, fp32 adapter (master) weights."""
    copied = copy.deepcopy(prepared)
    for name, parameter in copied.model.named_parameters():
        if "lora_" not in name:
            parameter.data = parameter.data.to(torch.bfloat16)
    return copied


def test_fused_lora_on_a_bf16_base_is_as_accurate_as_peft():
    plain, fused = prepared_pair(lora(QKVO))
    data = batch()
    _, reference, _ = loss_and_grads(plain, data)  # fp32 throughout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, plain_grads, _ = loss_and_grads(with_bf16_base(plain), data)
        _, fused_grads, nodes = loss_and_grads(with_bf16_base(fused), data)
    assert nodes == 3 * LAYERS
    for name, exact in reference.items():
        assert fused_grads[name].dtype == torch.float32  # the fp32 master weights get fp32 gradients
        peft_error = (plain_grads[name] - exact).norm() / exact.norm()
        fused_error = (fused_grads[name] - exact).norm() / exact.norm()
        assert peft_error < 0.1, name  # bf16 rounding, not a wrong gradient
        assert fused_error <= 1.25 * peft_error + 1e-3, name


def test_lora_with_biased_projections_matches_peft():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, vocab_size=256, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, attention_bias=True, mlp_bias=True)
    torch.manual_seed(0)
    plain = prepare_model(LlamaForCausalLM(config), lora(ALL_LINEAR), CPU, activation_checkpointing=False, fuse=False)
    with torch.no_grad():
        for name, parameter in plain.model.named_parameters():
            if "lora_B" in name or name.endswith(".bias"):
                parameter.normal_(0, 0.1)
    fused = copy.deepcopy(plain)
    fuse_projections(fused.model)
    data = batch()
    plain_loss, plain_grads, _ = loss_and_grads(plain, data)
    fused_loss, fused_grads, nodes = loss_and_grads(fused, data)
    assert nodes == 4 * 2
    assert torch.allclose(fused_loss, plain_loss, rtol=1e-6)
    for name, grad in plain_grads.items():
        assert close(fused_grads[name], grad), name


def test_lora_dropout_keeps_peft_forward_for_the_adapted_layers():
    peft = dict(lora(QKVO), dropout=0.1)
    plain, fused = prepared_pair(peft)
    data = batch()
    _, _, nodes = loss_and_grads(fused, data)
    assert nodes == LAYERS  # only the frozen gate/up pairs: every LoRA layer ran peft's own forward
    plain.model.eval()
    fused.model.eval()
    with torch.no_grad():
        assert close(fused.model(input_ids=data["input_ids"]).logits, plain.model(input_ids=data["input_ids"]).logits)


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


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many projections each fused computation covered, call by call."""
    from peftpipe.engines.hf import fused_projections

    calls, project = [], fused_projections.project

    def counted(x, projections):
        calls.append(len(projections))
        return project(x, projections)

    monkeypatch.setattr(fused_projections, "project", counted)
    return calls


def test_disabled_and_merged_adapters_give_peft_outputs(fused_calls):
    plain, fused = prepared_pair(lora(ALL_LINEAR))
    ids = batch()["input_ids"]
    with torch.no_grad():
        adapted = plain.model(input_ids=ids).logits
        with plain.model.disable_adapter():
            base_only = plain.model(input_ids=ids).logits
        assert not close(adapted, base_only, 1e-2)
        assert close(fused.model(input_ids=ids).logits, adapted)
        assert fused_calls == [3, 1, 2, 1] * LAYERS  # q/k/v, o, gate/up, down
        with fused.model.disable_adapter():
            assert close(fused.model(input_ids=ids).logits, base_only)
        fused.model.merge_adapter()
        assert close(fused.model(input_ids=ids).logits, adapted)
        with fused.model.disable_adapter():  # peft unmerges first; the fused path must let it
            assert close(fused.model(input_ids=ids).logits, base_only)
    assert fused_calls == [3, 1, 2, 1] * LAYERS * 3  # all but the last: merged and disabled needs peft


def test_copies_and_pickles_compute_with_their_own_weights():
    import io

    _, fused = prepared_pair(lora(QKVO))
    ids = batch()["input_ids"]
    twin = copy.deepcopy(fused)
    with torch.no_grad():
        before = fused.model(input_ids=ids).logits
        for name, parameter in twin.model.named_parameters():
            if "lora_B" in name:
                parameter.zero_()
        assert close(fused.model(input_ids=ids).logits, before)
        assert not close(twin.model(input_ids=ids).logits, before, 1e-3)
        buffer = io.BytesIO()
        torch.save(fused.model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert close(loaded(input_ids=ids).logits, before)
    assert fuse_projections(fused.model) == []  # already routed: nothing is wrapped twice


def test_members_called_with_other_inputs_compute_their_own_outputs(fused_calls):
    torch.manual_seed(0)
    q, k, v = (torch.nn.Linear(8, width, bias=True).requires_grad_(False) for width in (8, 4, 4))
    expected = {name: copy.deepcopy(module) for name, module in zip("qkv", (q, k, v))}
    ProjectionGroup([q, k, v]).install()
    x, other = torch.randn(5, 8), torch.randn(5, 8)
    with torch.no_grad():
        for name, module in zip("qkv", (q, k, v)):  # self-attention: one computation for the three
            assert close(module(x), expected[name](x))
        assert fused_calls == [3]
        assert close(q(x), expected["q"](x))
        # cross-attention: k and v see another tensor than q did; the group stops sharing
        assert close(k(other), expected["k"](other))
        assert close(v(other), expected["v"](other))
        assert close(q(x), expected["q"](x))
    assert fused_calls == [3, 3, 1, 1, 1]


def test_linear_subclasses_keep_their_own_forward(fused_calls):
    class Doubled(torch.nn.Linear):  # stands for FP8 / 4-bit layers that compute with more than weight
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    q, k, v = Doubled(8, 8), torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    for module in (q, k, v):
        module.requires_grad_(False)
    ProjectionGroup([q, k, v]).install()
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert close(q(x), 2 * torch.nn.functional.linear(x, q.weight, q.bias))
        assert close(k(x), torch.nn.functional.linear(x, k.weight, k.bias))
    assert fused_calls == [1]  # k on its own; q through its own forward


def test_gradients_of_the_shared_function_against_finite_differences():
    from peftpipe.engines.hf.fused_projections import Projection, project

    torch.manual_seed(0)
    double = {"dtype": torch.float64}
    x = torch.randn(6, 10, **double)[:, ::2].requires_grad_()  # non-contiguous input
    lora_a, lora_b = (torch.randn(3, 5, **double, requires_grad=True), torch.randn(4, 3, **double, requires_grad=True))
    lora_a2, lora_b2 = (torch.randn(2, 5, **double, requires_grad=True), torch.randn(7, 2, **double, requires_grad=True))
    weights = [torch.randn(n, 5, **double) for n in (4, 6, 7)]
    bias = torch.randn(4, **double)

    def outputs(x, a, b, a2, b2):
        projections = [Projection(weights[0], bias, a, b, 0.5), Projection(weights[1], None),
                       Projection(weights[2], None, a2, b2, 2.0)]
        return tuple(project(x, projections))

    assert torch.autograd.gradcheck(outputs, (x, lora_a, lora_b, lora_a2, lora_b2))
    first, _, _ = outputs(x, lora_a, lora_b, lora_a2, lora_b2)
    first.sum().backward()  # the third output unused: its adapter gets no gradient, as under peft
    assert lora_a.grad is not None and lora_a2.grad is None and lora_b2.grad is None
