"""Answer metrics over a predictions JSONL, as NeMo and the SQuAD script define them."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, label: str) -> float:
    """NeMo's ``exact_string_match``: raw string equality, no stripping or case folding."""
    return float(pred == label)


def normalized_exact_match(pred: str, label: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(label))


def token_f1(pred: str, label: str) -> float:
    """SQuAD's token F1 over normalised answers."""
    pred_tokens = normalize_answer(pred).split()
    label_tokens = normalize_answer(label).split()
    if not pred_tokens or not label_tokens:
        return float(pred_tokens == label_tokens)
    common = Counter(pred_tokens) & Counter(label_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(label_tokens)
    return 2 * precision * recall / (precision + recall)


def score_predictions(predictions_file: Path) -> dict[str, float | int]:
    """Mean exact match (raw and normalised) and token F1 over every line of the file."""
    rows = [json.loads(line) for line in predictions_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{predictions_file} holds no predictions")
    n = len(rows)
    return {
        "records": n,
        "exact_match": sum(exact_match(r["pred"], r["label"]) for r in rows) / n,
        "exact_match_normalized": sum(normalized_exact_match(r["pred"], r["label"]) for r in rows) / n,
        "f1": sum(token_f1(r["pred"], r["label"]) for r in rows) / n,
    }
