"""Token lengths of a NeMo JSONL file under a model's tokenizer, counted as training counts them.

A record's length is that of the prompt (``prompt_template`` up to ``{output}``, with the
tokenizer's special tokens) plus the output and one EOS token, as the hf engine encodes it;
records longer than ``max_seq_length`` are cut in training (the prompt from the left).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peftpipe.data.records import TOO_DEEP_FIX, TOO_DEEP_PROBLEM, BadRecord, DatasetError, iter_text_lines

BATCH = 256


@dataclass(frozen=True)
class Lengths:
    p50: int
    p95: int
    max: int

    @classmethod
    def of(cls, values: list[int]) -> Lengths:
        ordered = sorted(values)
        return cls(percentile(ordered, 50), percentile(ordered, 95), ordered[-1] if ordered else 0)


@dataclass(frozen=True)
class TokenStats:
    file: str
    records: int
    prompt: Lengths
    output: Lengths
    total: Lengths
    max_seq_length: int
    over_max_seq_length: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def token_stats(path: Path, model_path: Path, max_seq_length: int, prompt_template: str) -> TokenStats:
    """Count the records of ``path`` and the token-length percentiles of their parts."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    except Exception as error:  # noqa: BLE001 - transformers raises OSError, ValueError, ... for a bad directory
        raise DatasetError(f"{model_path}: no tokenizer could be loaded ({type(error).__name__}:"
                           f" {' '.join(str(error).split())[:300]}). Fix: pass the model directory that holds"
                           " tokenizer.json or tokenizer_config.json.") from None
    prefix = prompt_template[: prompt_template.rindex("{output}")]
    prompts: list[int] = []
    outputs: list[int] = []
    for batch in _batches(path):
        try:
            texts = [prefix.format(**record) for record in batch]
        except KeyError as error:
            raise DatasetError(f"{path}: prompt_template uses {error}, which the records do not have. "
                               "Fix: pass a --prompt-template over the records' keys.") from None
        prompts += [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
        answers = tokenizer([r["output"] for r in batch], add_special_tokens=False)["input_ids"]
        outputs += [len(ids) + 1 for ids in answers]
    totals = [p + o for p, o in zip(prompts, outputs)]
    return TokenStats(
        file=str(path),
        records=len(totals),
        prompt=Lengths.of(prompts),
        output=Lengths.of(outputs),
        total=Lengths.of(totals),
        max_seq_length=max_seq_length,
        over_max_seq_length=sum(total > max_seq_length for total in totals),
    )


def _batches(path: Path) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for number, line in iter_text_lines(path):
        if isinstance(line, BadRecord):
            raise DatasetError(str(line))
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}:{number}: malformed JSON ({error.msg} at column {error.colno}). "
                               "Fix: correct the line (peftpipe data convert checks a whole file).") from None
        except RecursionError:
            raise DatasetError(f"{path}:{number}: {TOO_DEEP_PROBLEM}. Fix: {TOO_DEEP_FIX}.") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("input", "output")):
            raise DatasetError(f"{path}:{number}: not a NeMo record (text 'input' and 'output'). "
                               "Fix: convert the file with peftpipe data convert first.")
        batch.append(record)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
