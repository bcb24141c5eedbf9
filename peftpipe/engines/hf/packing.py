"""Micro batches from encoded records: padded to the longest, or packed without padding.

Padded: ``micro_batch_size`` records a micro batch, right-padded to the longest of them. No
attention mask is passed: attention is causal and the padding sits after every real token, so
no real token can see a pad, and the kernels keep their fast mask-free path.

Packed: the records of a rank's share of the global batch are placed first-fit-decreasing into
rows of ``max_seq_length`` tokens, ``micro_batch_size`` rows a micro batch. A micro batch is sent
as one flat sequence (no padding at all) with position ids restarting at 0 for every record and
the record boundaries (``cu_seq_lens``) for the variable-length attention kernel, so no token
attends across records. The label of each record's first token is dropped: in the padded layout
position 0 is never predicted either, and in the packed one it would be predicted from the
previous record's last token. Loss sums are therefore the same in both layouts.

Label positions and targets are computed here, on the host, so the loss never needs a
device-to-host sync (a boolean mask on the device would).
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100

Example = dict[str, list[int]]


def label_tokens(example: Example) -> int:
    # Causal LMs predict token t+1 from t, so the first position's label is never scored.
    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


def plan_padded(n_examples: int, micro_batch_size: int) -> list[list[list[int]]]:
    """Micro batches of ``micro_batch_size`` records, each record its own row."""
    return [[[i] for i in range(start, min(start + micro_batch_size, n_examples))]
            for start in range(0, n_examples, micro_batch_size)]


def plan_packed(lengths: list[int], micro_batch_size: int, row_length: int) -> list[list[list[int]]]:
    """First-fit-decreasing bins of ``row_length`` tokens, ``micro_batch_size`` bins a micro batch.

    Deterministic (ties by index), so every rank and every rerun packs a batch the same way.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        need = min(lengths[index], row_length)
        for row, room in enumerate(free):
            if room >= need:
                rows[row].append(index)
                free[row] -= need
                break
        else:
            rows.append([index])
            free.append(row_length - need)
    return [rows[start : start + micro_batch_size] for start in range(0, len(rows), micro_batch_size)]


def plan_micro_batches(examples: list[Example], micro_batch_size: int, row_length: int,
                       packing: bool) -> list[list[list[int]]]:
    """Micro batches, each a list of rows, each row a list of indices into ``examples``."""
    if not packing:
        return plan_padded(len(examples), micro_batch_size)
    return plan_packed([len(e["input_ids"]) for e in examples], micro_batch_size, row_length)


def _label_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions p (row * width + t) whose next token t+1 is a label, and those labels."""
    following = labels[:, 1:]
    rows, steps = (following != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows * labels.shape[1] + steps, following[rows, steps]


def collate(examples: list[Example], rows: list[list[int]], pad_id: int, device: torch.device,
            packed: bool) -> dict[str, Any]:
    """Tensors of one micro batch on ``device`` (copied from pinned memory without blocking on CUDA).

    Keys: ``input_ids``; ``label_positions`` / ``label_targets`` (flat indices into the hidden
    states without the last position, and the token each predicts); for packed batches
    ``position_ids``, ``cu_seq_lens`` and ``max_length``; and ``tokens``, the count of real
    (non-pad) tokens, as a plain int for throughput figures.
    """
    if packed:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        bounds = [0]
        for row in rows:
            for index in row:
                example = examples[index]
                ids += example["input_ids"]
                labels += [IGNORE_INDEX] + example["labels"][1:]
                positions += range(len(example["input_ids"]))
                bounds.append(len(ids))
        label_positions, label_targets = _label_targets(torch.tensor([labels], dtype=torch.long))
        host = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "cu_seq_lens": torch.tensor(bounds, dtype=torch.int32),
            "label_positions": label_positions,
            "label_targets": label_targets,
        }
        extra = {"max_length": max(b - a for a, b in zip(bounds, bounds[1:])), "tokens": len(ids)}
    else:
        chosen = [examples[i] for row in rows for i in row]
        longest = max(len(e["input_ids"]) for e in chosen)
        ids_rows = [e["input_ids"] + [pad_id] * (longest - len(e["input_ids"])) for e in chosen]
        label_rows = [e["labels"] + [IGNORE_INDEX] * (longest - len(e["labels"])) for e in chosen]
        label_positions, label_targets = _label_targets(torch.tensor(label_rows, dtype=torch.long))
        host = {
            "input_ids": torch.tensor(ids_rows, dtype=torch.long),
            "label_positions": label_positions,
            "label_targets": label_targets,
        }
        extra = {"tokens": sum(len(e["input_ids"]) for e in chosen)}
    return {**to_device(host, device), **extra}


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type != "cuda":
        return tensors
    # Pinned host memory lets the copy run asynchronously, overlapping the previous step's kernels.
    return {key: value.pin_memory().to(device, non_blocking=True) for key, value in tensors.items()}
