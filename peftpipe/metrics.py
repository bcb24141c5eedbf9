"""Answer metrics over a predictions JSONL, as NeMo, the SQuAD script and PubMedQA's evaluation define them."""

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


# Label tasks (PubMedQA's yes/no/maybe, any small closed set of answers) are scored the way PubMedQA's
# own evaluation.py scores: a prediction is its first word, lower-cased without punctuation, compared
# with the label. Macro-F1 averages the per-label F1 over the label set; a prediction outside the set
# counts as a miss of the gold label.
# A detected label task: at most this many distinct one-word answers, each seen at least twice on average.
MAX_DETECTED_LABELS = 10


def first_word(text: str) -> str:
    words = normalize_answer(text).split()
    return words[0] if words else ""


def detect_labels(labels: Sequence[str]) -> list[str] | None:
    """The closed label set of these gold answers, or None when they do not look like one."""
    distinct = {normalize_answer(label) for label in labels}
    if not 2 <= len(distinct) <= MAX_DETECTED_LABELS or len(labels) < 2 * len(distinct):
        return None
    if any(len(label.split()) != 1 for label in distinct):
        return None
    return sorted(distinct)


def label_scores(preds: Sequence[str], golds: Sequence[str], label_set: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 of first-word predictions against the gold labels."""
    predicted = [first_word(p) for p in preds]
    gold = [normalize_answer(g) for g in golds]
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
    f1s = []
    for label in (normalize_answer(x) for x in label_set):
        tp = sum(p == label and g == label for p, g in zip(predicted, gold))
        fp = sum(p == label and g != label for p, g in zip(predicted, gold))
        fn = sum(p != label and g == label for p, g in zip(predicted, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}


def score_predictions(predictions_file: Path, labels: list[str] | None = None) -> dict[str, float | int]:
    """Mean exact match (raw and normalised) and token F1 over every line of the file; for a label task
    (``labels`` declared, or detected from the gold answers) also accuracy and macro-F1."""
    rows = [json.loads(line) for line in predictions_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{predictions_file} holds no predictions")
    n = len(rows)
    scores: dict[str, float | int] = {
        "records": n,
        "exact_match": sum(exact_match(r["pred"], r["label"]) for r in rows) / n,
        "exact_match_normalized": sum(normalized_exact_match(r["pred"], r["label"]) for r in rows) / n,
        "f1": sum(token_f1(r["pred"], r["label"]) for r in rows) / n,
    }
    label_set = labels or detect_labels([r["label"] for r in rows])
    if label_set:
        scores.update(label_scores([r["pred"] for r in rows], [r["label"] for r in rows], label_set))
    return scores
