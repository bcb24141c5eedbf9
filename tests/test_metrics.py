from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftpipe.metrics import exact_match, normalized_exact_match, score_predictions, token_f1


def test_exact_match_is_raw_string_equality_as_in_nemo() -> None:
    assert exact_match("Warsaw", "Warsaw") == 1.0
    assert exact_match(" Warsaw", "Warsaw") == 0.0
    assert exact_match("warsaw", "Warsaw") == 0.0


def test_normalized_exact_match_ignores_case_articles_punctuation() -> None:
    assert normalized_exact_match("The Volga.", "the volga") == 1.0
    assert normalized_exact_match("a British comedy group", "British comedy group!") == 1.0
    assert normalized_exact_match("Volga river", "the Volga") == 0.0


@pytest.mark.parametrize(
    ("pred", "label", "expected"),
    [
        ("in the chloroplasts of leaf cells", "in the chloroplasts of leaf cells", 1.0),
        ("chloroplasts", "in the chloroplasts of leaf cells", 2 * (1.0 * 0.2) / 1.2),
        ("arabica", "arabica and robusta", 2 * (1.0 * (1 / 3)) / (1 + 1 / 3)),
        ("Brazil", "caffeine", 0.0),
        ("", "", 1.0),
        ("the", "Brazil", 0.0),
    ],
)
def test_token_f1_matches_squad_definition(pred: str, label: str, expected: float) -> None:
    assert token_f1(pred, label) == pytest.approx(expected)


def test_score_predictions_averages_every_line(tmp_path: Path) -> None:
    rows = [{"input": "q1", "pred": "Warsaw", "label": "Warsaw"}, {"input": "q2", "pred": "the Volga", "label": "Volga"}]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = score_predictions(path)
    assert scores == {"records": 2, "exact_match": 0.5, "exact_match_normalized": 1.0, "f1": 1.0}


def write_predictions(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"input": f"q{n}", "pred": p, "label": g}) + "\n"
                            for n, (p, g) in enumerate(pairs)))
    return path


def test_label_tasks_get_accuracy_and_macro_f1_on_first_words(tmp_path: Path) -> None:
    # PubMedQA-style: the first word of the answer, case and punctuation dropped, is the prediction.
    pairs = [("Yes, because the trial", "yes"), ("no", "no"), ("maybe.", "maybe"), ("No", "yes"), ("no", "no"),
             ("perhaps", "maybe")]
    scores = score_predictions(write_predictions(tmp_path / "p.jsonl", pairs), ["yes", "no", "maybe"])
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # yes: tp 1, fn 1 -> 2/3; no: tp 2, fp 1 -> 4/5; maybe: tp 1, fn 1 -> 2/3 ("perhaps" is outside the set).
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3)
    # Undeclared, the closed set is detected from the gold answers.
    assert score_predictions(tmp_path / "p.jsonl")["macro_f1"] == pytest.approx(scores["macro_f1"])


def test_free_text_answers_are_not_a_label_task(tmp_path: Path) -> None:
    pairs = [("Warsaw", "Warsaw"), ("the Volga", "Volga river"), ("1905", "1905"), ("Paris", "Lyon")]
    scores = score_predictions(write_predictions(tmp_path / "p.jsonl", pairs))
    assert "accuracy" not in scores and "macro_f1" not in scores
