"""Packing and the engine's fast loss compute what the straightforward transformers loss computes (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peftpipe.data.prepare import prepare_dataset
from peftpipe.engines.hf.fast_kernels import ChunkedLinearCrossEntropy
from peftpipe.engines.hf.modeling import loss_sum, prepare_model
from peftpipe.engines.hf.packing import IGNORE_INDEX, collate, label_tokens, plan_micro_batches, plan_packed
from peftpipe.engines.hf.script_common import encode_record, read_records
from peftpipe.paths import RunPaths
from peftpipe.validation import load_spec
from tests.conftest import TINY_REPO_ID, write_spec

LORA = {"method": "lora", "r": 8, "alpha": 16.0, "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory, hub_root: Path) -> tuple[list, int]:
    """The tiny SQuAD file's training records, encoded by the engine, and the pad id."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("packing")
    loaded = load_spec(write_spec(tmp / "spec"))
    paths = RunPaths(tmp / "run")
    prepare_dataset(loaded, paths.data_dir)
    tokenizer = AutoTokenizer.from_pretrained(hub_root / TINY_REPO_ID)
    template = loaded.spec.dataset.prompt_template
    examples = [encode_record(r, template, tokenizer, 256) for r in read_records(str(paths.data_file("train")))]
    return examples[:24], tokenizer.pad_token_id


def fresh_model(hub_root: Path, seed: int = 3):
    """The tiny model with LoRA whose B matrices are random, so the adapters change the output."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID, dtype=torch.float32)
    torch.manual_seed(seed)
    prepared = prepare_model(base, LORA, CPU, activation_checkpointing=False)
    with torch.no_grad():
        for name, parameter in prepared.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return prepared


def reference_loss_sum(hub_root: Path, examples: list, pad_id: int) -> float:
    """The textbook computation: padded batch, attention mask, full logits, cross-entropy over shifted labels."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peftpipe.engines.hf.modeling import peft_config

    base = AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID, dtype=torch.float32, attn_implementation="eager")
    torch.manual_seed(3)
    model = get_peft_model(base, peft_config(LORA))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [pad_id] * (longest - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * (longest - len(e["labels"])) for e in examples])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (longest - len(e["input_ids"])) for e in examples])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
                                                   reduction="sum"))


def engine_loss_and_grads(prepared, examples: list, pad_id: int, micro_batch_size: int, row_length: int,
                          packing: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    prepared.model.zero_grad(set_to_none=True)
    total = 0.0
    plan = plan_micro_batches(examples, micro_batch_size, row_length, packing)
    for rows in plan:
        loss = loss_sum(prepared.model, collate(examples, rows, pad_id, CPU, packed=packing),
                        prepared.head_weight, prepared.use_liger)
        loss.backward()
        total += float(loss.detach())
    grads = {n: p.grad.clone() for n, p in prepared.model.named_parameters() if p.requires_grad}
    return total, grads, len(plan)


def test_packed_loss_equals_padded_loss_on_the_same_records(hub_root: Path, records: tuple[list, int]) -> None:
    examples, pad_id = records
    prepared = fresh_model(hub_root)
    padded, padded_grads, padded_micro = engine_loss_and_grads(prepared, examples, pad_id, 4, 256, packing=False)
    packed, packed_grads, packed_micro = engine_loss_and_grads(prepared, examples, pad_id, 1, 512, packing=True)
    assert packed_micro <= len(examples) / 3  # rows really hold several records
    assert packed == pytest.approx(padded, rel=1e-5)
    for name, grad in padded_grads.items():  # the same up to fp32 summation order
        assert float((packed_grads[name] - grad).norm()) <= 1e-5 * float(grad.norm()) + 1e-9, name
    # Both equal the textbook loss (eager attention with a padding mask, full logits).
    assert padded == pytest.approx(reference_loss_sum(hub_root, examples, pad_id), rel=1e-5)
    assert sum(label_tokens(e) for e in examples) > 0


def test_packing_without_record_boundaries_would_change_the_loss(hub_root: Path, records: tuple[list, int]) -> None:
    """The equality above is not vacuous: attending across records changes the loss."""
    examples, pad_id = records
    prepared = fresh_model(hub_root)
    rows = plan_packed([len(e["input_ids"]) for e in examples], 4, 256)[0]
    batch = collate(examples, rows, pad_id, CPU, packed=True)
    with torch.no_grad():
        isolated = float(loss_sum(prepared.model, batch, prepared.head_weight, False))
        batch = {k: v for k, v in batch.items() if k not in ("cu_seq_lens", "position_ids", "max_length")}
        leaking = float(loss_sum(prepared.model, batch, prepared.head_weight, False))
    assert abs(isolated - leaking) > 1e-3 * abs(isolated)


def test_packing_places_every_record_once_within_the_row_length() -> None:
    lengths = [300, 20, 180, 90, 511, 64, 200, 1, 450, 120] * 3
    plan = plan_packed(lengths, 2, 512)
    placed = [i for micro in plan for row in micro for i in row]
    assert sorted(placed) == list(range(len(lengths)))
    assert all(len(micro) <= 2 for micro in plan)
    assert all(sum(lengths[i] for i in row) <= 512 for micro in plan for row in micro)
    rows = sum(len(micro) for micro in plan)
    assert rows == -(-sum(lengths) // 512)  # first-fit decreasing reaches the lower bound here
    assert plan_packed(lengths, 2, 512) == plan  # deterministic


def test_chunked_linear_cross_entropy_matches_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (37,))
    fused = ChunkedLinearCrossEntropy.apply(hidden, weight, targets, 8)  # five chunks, the last partial
    (fused * 0.5).backward()
    fused_grad = hidden.grad.clone()
    hidden.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (plain * 0.5).backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused_grad, hidden.grad)
