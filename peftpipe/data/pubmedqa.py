"""PubMedQA (PQA-L) JSON into NeMo records.

The files are what the PubMedQA repository ships and what its ``preprocess/split_dataset.py``
writes: ``ori_pqal.json``, ``test_set.json``, ``pqal_foldN/train_set.json`` and
``pqal_foldN/dev_set.json``, each an object keyed by PMID whose values carry ``QUESTION``,
``CONTEXTS``, ``LABELS``, ``final_decision``, ``reasoning_required_pred`` and
``reasoning_free_pred``. ``test_ground_truth.json`` maps PMID to the gold ``final_decision``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from peftpipe.data.records import (
    TOO_DEEP, TOO_DEEP_FIX, TOO_DEEP_PROBLEM, BadRecord, DatasetError, Item, iter_top_level, load_json_document,
    read_json_text,
)
from peftpipe.spec import DatasetSpec

ANSWERS = ("yes", "no", "maybe")
GROUND_TRUTH_NAME = "test_ground_truth.json"


def ground_truth_file(dataset: DatasetSpec, test_file: Path, resolve: Callable[[str], Path]) -> Path | None:
    """The spec's ground truth file, else ``test_ground_truth.json`` beside the test file, if there."""
    if dataset.pubmedqa.ground_truth is not None:
        return resolve(dataset.pubmedqa.ground_truth)
    beside = test_file.parent / GROUND_TRUTH_NAME
    return beside if beside.is_file() else None


def load_ground_truth(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DatasetError(f"{path}: the ground truth file does not exist. "
                           "Fix: correct dataset.pubmedqa.ground_truth.")
    truth = load_json_document(path)
    if not isinstance(truth, dict):
        raise DatasetError(f"{path}: not a PubMedQA ground truth file (an object PMID -> yes/no/maybe). "
                           "Fix: point dataset.pubmedqa.ground_truth at test_ground_truth.json.")
    return truth


def read_pubmedqa(path: Path, dataset: DatasetSpec, is_test: bool = False,
                  ground_truth: Path | None = None) -> Iterator[Item]:
    """One item per PMID; the output is the spec's label field (``final_decision`` by default)."""
    label_field = dataset.pubmedqa.label_field
    truth = load_ground_truth(ground_truth) if ground_truth is not None else None
    template = dataset.resolved_input_template
    for pmid, entry, line in iter_top_level(path, read_json_text(path), "{"):
        where = f"PMID {pmid}"
        if entry is TOO_DEEP:
            yield BadRecord(path, line, where, TOO_DEEP_PROBLEM, TOO_DEEP_FIX)
            continue
        if not isinstance(entry, dict):
            yield BadRecord(path, line, where, "the record is not an object", "remove it or correct the structure")
            continue
        question, contexts = entry.get("QUESTION"), entry.get("CONTEXTS")
        if not isinstance(question, str) or not question.strip():
            yield BadRecord(path, line, where, "the record has no QUESTION text", "add the QUESTION field")
            continue
        if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
            yield BadRecord(path, line, where, "the record has no CONTEXTS list of texts", "add the CONTEXTS field")
            continue
        label = _label(path, line, where, str(pmid), entry, label_field, is_test, truth, ground_truth)
        if isinstance(label, BadRecord):
            yield label
            continue
        record: dict[str, Any] = {
            "input": template.format(question=question, context="\n".join(contexts), pmid=pmid),
            "output": label,
            "pmid": str(pmid),
        }
        if label_field != "final_decision" and isinstance(entry.get("final_decision"), str):
            record["final_decision"] = entry["final_decision"]
        yield record


def _label(path: Path, line: int, where: str, pmid: str, entry: dict[str, Any], label_field: str, is_test: bool,
           truth: dict[str, str] | None, truth_file: Path | None) -> str | BadRecord:
    value = entry.get(label_field)
    if truth is not None and label_field == "final_decision":
        if pmid not in truth:
            return BadRecord(path, line, where, f"the PMID is not in {truth_file}", "use the ground truth file of this test set")
        if isinstance(value, str) and value != truth[pmid]:
            return BadRecord(path, line, where, f"final_decision {value!r} disagrees with {truth_file} "
                             f"({truth[pmid]!r})", "use the ground truth file of this test set")
        value = truth[pmid]
    if value is None:
        if is_test and label_field == "final_decision":
            # A whole test set without labels is not a record-level problem: skipping would empty it.
            raise DatasetError(
                f"{path}:{line}: {where}: the test set has no ground truth (no final_decision and no "
                f"{GROUND_TRUTH_NAME} beside it). Fix: put {GROUND_TRUTH_NAME} next to {path.name} "
                "or set dataset.pubmedqa.ground_truth."
            )
        return BadRecord(path, line, where, f"the record has no {label_field}",
                         f"add {label_field} or choose another dataset.pubmedqa.label_field")
    if not isinstance(value, str) or not value.strip():
        return BadRecord(path, line, where, f"the record has an empty output ({label_field} is {value!r})",
                         f"give {label_field} one of yes, no, maybe")
    if value not in ANSWERS:
        return BadRecord(path, line, where, f"{label_field} is {value!r}, not yes, no or maybe",
                         "correct the label")
    return value
