"""Bad input gives an exact error naming file, place and fix, or a counted skip listed in stats.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app
from peftpipe.data.convert import resolve_sources
from peftpipe.data.prepare import convert_dataset
from peftpipe.data.records import DatasetError
from peftpipe.spec import DatasetSpec, resolve_relative
from tests.conftest import write_spec

DATA = Path(__file__).parent / "data" / "datasets"
FAQ = {"input": "{question}\n{context}", "output": "answer"}
PUBMEDQA_TRAIN = (DATA / "pubmedqa/pqal_fold0/train_set.json").read_text()
REENCODE = "Fix: re-encode the file as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8)."


def pubmedqa_entry(**changes: Any) -> dict[str, Any]:
    entry = {"QUESTION": "Does it work?", "CONTEXTS": ["It was tested."], "LABELS": ["RESULTS"],
             "reasoning_required_pred": "yes", "reasoning_free_pred": "yes", "final_decision": "yes"}
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


def pubmedqa_file(entries: dict[str, Any]) -> str:
    return json.dumps(entries, indent=4)


def squad_file(qa: dict[str, Any], context: str = "Tides follow the Moon.") -> str:
    return json.dumps({"version": "1.1", "data": [{"title": "Tide", "paragraphs": [{"context": context, "qas": [qa]}]}]})


def faq(*lines: str) -> dict[str, str]:
    return {"faq.jsonl": "".join(line + "\n" for line in lines)}


MALFORMED = [
    pytest.param(
        "jsonl", faq('{"question": "Why?", "context": "c", "answer": "a"}', '{"question": "How?" "context": "c"}'),
        {"path": "faq.jsonl", "fields": FAQ},
        "{dir}/faq.jsonl:2: malformed JSON (Expecting ',' delimiter at column 21). "
        "Fix: correct the JSON on that line or remove the line.", id="jsonl-malformed-json"),
    pytest.param(
        "jsonl", faq('{"question": "Why?", "answer": "Because."}'), {"path": "faq.jsonl", "fields": FAQ},
        "{dir}/faq.jsonl:1: field 'context' is missing (dataset.fields.input uses it). "
        "Fix: add 'context' to the record or change dataset.fields.input.", id="jsonl-missing-mapped-field"),
    pytest.param(
        "jsonl", faq("", '{"question": "Why?", "context": null, "answer": "Because."}'),
        {"path": "faq.jsonl", "fields": FAQ},
        "{dir}/faq.jsonl:2: field 'context' is null (dataset.fields.input uses it). "
        "Fix: add 'context' to the record or change dataset.fields.input.", id="jsonl-null-mapped-field"),
    pytest.param(
        "jsonl", faq('{"question": "Why?", "context": "c", "answer": "  "}'), {"path": "faq.jsonl", "fields": FAQ},
        "{dir}/faq.jsonl:1: the record has an empty output (dataset.fields.output is 'answer'). "
        "Fix: fill in the answer or remove the record.", id="jsonl-empty-output"),
    pytest.param(
        "jsonl", faq('["Why?", "Because."]'), {"path": "faq.jsonl", "fields": FAQ},
        "{dir}/faq.jsonl:1: the record is a JSON array, not an object. Fix: write one JSON object per record.",
        id="jsonl-not-an-object"),
    pytest.param(
        "jsonl", {"nemo.jsonl": b'{"input": "ok", "output": "fine"}\n{"input": "caf\xe9 au lait?", "output": "yes"}\n'},
        {"path": "nemo.jsonl"},
        "{dir}/nemo.jsonl:2: not UTF-8 (byte 0xe9 at byte 15 of the line). " + REENCODE, id="jsonl-non-utf8"),
    pytest.param(
        "jsonl", {"nemo.jsonl": '{"input": "Q?", "output": ""}\n'}, {"path": "nemo.jsonl"},
        "{dir}/nemo.jsonl:1: the record has an empty output. Fix: fill in the answer or remove the record.",
        id="nemo-jsonl-empty-output"),
    pytest.param(
        "jsonl", {"nemo.jsonl": '{"input": "2+2?", "output": 4}\n'}, {"path": "nemo.jsonl"},
        "{dir}/nemo.jsonl:1: 'output' is a number, not text. Fix: write 'output' as a JSON string.",
        id="nemo-jsonl-output-not-text"),
    pytest.param(
        "jsonl", {"nemo.jsonl": '{"prompt": "Q?", "output": "A"}\n'}, {"path": "nemo.jsonl"},
        "{dir}/nemo.jsonl:1: the record has no 'input' field. Fix: add 'input', or map source fields with "
        "dataset.fields.", id="nemo-jsonl-missing-input"),
    pytest.param(
        "json", {"faq.json": '[\n  {"question": "Why?", "context": "c", "answer": "a"},\n  "stray text"\n]\n'},
        {"path": "faq.json", "fields": FAQ},
        "{dir}/faq.json:3: element [1]: the record is a JSON string, not an object. "
        "Fix: write one JSON object per record.", id="json-array-element-not-an-object"),
    pytest.param(
        "json", {"faq.json": '[\n  {"question": "Why?", "context": "c", "answer": "a"},\n  {"question": "How?" "context": "c"}\n]'},
        {"path": "faq.json", "fields": FAQ},
        "{dir}/faq.json:3: malformed JSON (Expecting ',' delimiter at column 23). "
        "Fix: correct the JSON at that line and column.", id="json-array-malformed"),
    pytest.param(
        "csv", {"faq.csv": "id,question,text,answer\nfaq-1,Why?,Because it is.,Because\n"},
        {"path": "faq.csv", "fields": FAQ},
        "{dir}/faq.csv:1: the CSV header lacks the column(s) 'context' (dataset.fields.input); it has 'id', "
        "'question', 'text', 'answer'. Fix: rename the columns in the file or change dataset.fields (and "
        "dataset.delimiter for TSV).", id="csv-header-lacks-mapped-column"),
    pytest.param(
        "csv", {"faq.csv": "question,context,answer\nWhich formats?,PDF, PNG,PDF\n"}, {"path": "faq.csv", "fields": FAQ},
        "{dir}/faq.csv:2: the row has 4 fields but the header has 3. "
        "Fix: quote fields that contain the delimiter, or correct the row.", id="csv-row-with-an-extra-field"),
    pytest.param(
        "csv", {"faq.csv": b"question,context,answer\nWhy?,Stra\xdfe,Because\n"}, {"path": "faq.csv", "fields": FAQ},
        "{dir}/faq.csv:2: not UTF-8 (byte 0xdf at byte 10 of the line). " + REENCODE, id="csv-non-utf8"),
    pytest.param(
        "csv", {"faq.csv": 'question,context,answer\nWhy?,"Because,yes\n'}, {"path": "faq.csv", "fields": FAQ},
        "{dir}/faq.csv:2: malformed CSV (unexpected end of data). Fix: close the quoted field or quote it correctly.",
        id="csv-unterminated-quote"),
    pytest.param(
        "squad", {"squad.json": '{\n  "version": "1.1",\n  "data": [\n    {"title": "Tide",\n     "paragraphs": [}\n]}'},
        {"path": "squad.json"},
        "{dir}/squad.json:5: malformed JSON (Expecting value at column 21). "
        "Fix: correct the JSON at that line and column.", id="squad-malformed-json"),
    pytest.param(
        "squad", {"squad.json": '[{"question": "Why?"}]'}, {"path": "squad.json"},
        "{dir}/squad.json: not SQuAD JSON (no top-level 'data' list). "
        "Fix: pass a SQuAD-layout file or choose the format that matches it.", id="squad-wrong-layout"),
    pytest.param(
        "squad", {"squad.json": squad_file({"id": "q1", "question": "What do tides follow?", "answers": []})},
        {"path": "squad.json"},
        "{dir}/squad.json: data[0].paragraphs[0].qas[0] (id 'q1'): the question has no answers. "
        "Fix: add an answer, or use format squad2 for SQuAD v2.0 data.", id="squad-no-answers"),
    pytest.param(
        "squad", {"squad.json": squad_file({"id": "q1", "question": "What do tides follow?",
                                            "answers": [{"text": "", "answer_start": 0}]})},
        {"path": "squad.json"},
        "{dir}/squad.json: data[0].paragraphs[0].qas[0] (id 'q1'): the question has an empty output "
        "(answers[0].text is empty). Fix: give the first answer a text.", id="squad-empty-answer"),
    pytest.param(
        "squad", {"squad.json": squad_file({"id": "q1", "question": "What do tides push?", "answers": [],
                                            "is_impossible": True})},
        {"path": "squad.json"},
        "{dir}/squad.json: data[0].paragraphs[0].qas[0] (id 'q1'): the question is marked is_impossible, which "
        "format squad does not allow. Fix: convert SQuAD v2.0 data with format squad2.",
        id="squad-v1-with-an-unanswerable-question"),
    pytest.param(
        "squad", {"squad.json": squad_file({"id": "q1", "question": "What do tides follow?",
                                            "answers": [{"text": "the Moon", "answer_start": 13}]}, context="")},
        {"path": "squad.json"},
        "{dir}/squad.json: data[0].paragraphs[0]: the paragraph has no context text (1 question left out). "
        "Fix: add the paragraph's context.", id="squad-paragraph-without-context"),
    pytest.param(
        "pubmedqa", {"train_set.json": PUBMEDQA_TRAIN,
                     "test_set.json": pubmedqa_file({"30000001": pubmedqa_entry(final_decision=None)})},
        {"train": "train_set.json", "test": "test_set.json"},
        "{dir}/test_set.json:2: PMID 30000001: the test set has no ground truth (no final_decision and no "
        "test_ground_truth.json beside it). Fix: put test_ground_truth.json next to test_set.json or set "
        "dataset.pubmedqa.ground_truth.", id="pubmedqa-test-set-without-ground-truth"),
    pytest.param(
        "pubmedqa", {"train_set.json": PUBMEDQA_TRAIN,
                     "test_set.json": pubmedqa_file({"30000001": pubmedqa_entry(), "30000002": pubmedqa_entry()}),
                     "test_ground_truth.json": '{"30000001": "yes"}'},
        {"train": "train_set.json", "test": "test_set.json"},
        "{dir}/test_set.json:14: PMID 30000002: the PMID is not in {dir}/test_ground_truth.json. "
        "Fix: use the ground truth file of this test set.", id="pubmedqa-pmid-not-in-ground-truth"),
    pytest.param(
        "pubmedqa", {"ori_pqal.json": pubmedqa_file({"30000001": pubmedqa_entry(),
                                                     "30000002": pubmedqa_entry(final_decision="Yes")})},
        {"path": "ori_pqal.json"},
        "{dir}/ori_pqal.json:14: PMID 30000002: final_decision is 'Yes', not yes, no or maybe. Fix: correct the label.",
        id="pubmedqa-label-not-yes-no-maybe"),
    pytest.param(
        "pubmedqa", {"ori_pqal.json": pubmedqa_file({"30000001": pubmedqa_entry(QUESTION=None)})},
        {"path": "ori_pqal.json"},
        "{dir}/ori_pqal.json:2: PMID 30000001: the record has no QUESTION text. Fix: add the QUESTION field.",
        id="pubmedqa-no-question"),
    pytest.param(
        "pubmedqa", {"ori_pqal.json": pubmedqa_file({"30000001": pubmedqa_entry()}).encode().replace(b"ted.", b"t\xe9.")},
        {"path": "ori_pqal.json"},
        "{dir}/ori_pqal.json:5: not UTF-8 (byte 0xe9 at byte offset 103). " + REENCODE, id="pubmedqa-non-utf8"),
]


def write_files(directory: Path, files: dict[str, str | bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content if isinstance(content, bytes) else content.encode())


def convert(directory: Path, fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    dataset = DatasetSpec(format=fmt, **options)
    sources = resolve_sources(dataset, lambda relative: resolve_relative(directory, relative))
    return convert_dataset(dataset, sources, directory / "out", seed=1)


@pytest.mark.parametrize(("fmt", "files", "options", "message"), MALFORMED)
def test_malformed_input_stops_with_an_exact_error(tmp_path: Path, fmt: str, files: dict[str, Any],
                                                   options: dict[str, Any], message: str) -> None:
    write_files(tmp_path, files)
    with pytest.raises(DatasetError) as caught:
        convert(tmp_path, fmt, options)
    assert str(caught.value) == message.replace("{dir}", str(tmp_path))
    assert not (tmp_path / "out" / "stats.json").exists(), "a failed conversion must not look complete"


def test_skip_lists_every_skipped_line_with_its_reason_and_loses_nothing(tmp_path: Path) -> None:
    write_files(tmp_path, faq(
        '{"id": 1, "question": "Why?", "context": "Because it rains.", "answer": "rain"}',
        '{"id": 2, "question": "How?" "context": "c", "answer": "a"}',
        '{"id": 3, "question": "When?", "answer": "today"}',
        '{"id": 4, "question": "Who?", "context": "Ann wrote it.", "answer": "Ann"}',
        '{"id": 5, "question": "Where?", "context": "In Paris.", "answer": ""}',
        '{"id": 6, "question": "Why?", "context": "Because it rains.", "answer": "rain"}',
        '{"id": 7, "question": "What?", "context": "A cat.", "answer": "a cat"}',
    ))
    (tmp_path / "faq.jsonl").write_bytes((tmp_path / "faq.jsonl").read_bytes() + b'{"id": 8, "answer": "\xff"}\n')
    stats = convert(tmp_path, "jsonl", {"path": "faq.jsonl", "fields": FAQ, "on_bad_record": "skip",
                                        "split": {"validation": 0.0, "test": 0.3}})
    path = str(tmp_path / "faq.jsonl")
    assert stats["skipped"] == [
        {"file": path, "line": 2, "where": "", "reason": "malformed JSON (Expecting ',' delimiter at column 30)"},
        {"file": path, "line": 3, "where": "", "reason": "field 'context' is missing (dataset.fields.input uses it)"},
        {"file": path, "line": 5, "where": "",
         "reason": "the record has an empty output (dataset.fields.output is 'answer')"},
        {"file": path, "line": 8, "where": "", "reason": "not UTF-8 (byte 0xff at byte 22 of the line)"},
    ]
    assert stats["skipped_count"] == 4
    assert stats["duplicates_removed"] == 1
    assert stats["counts"] == {"train": 2, "validation": 0, "test": 1}
    assert stats["records_read"] == sum(stats["counts"].values()) + stats["duplicates_removed"] + 4
    written = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert written["skipped"] == stats["skipped"]
    ids = sorted(json.loads(line)["id"] for split in ("train", "test")
                 for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines())
    assert ids == [1, 4, 7]


def test_skipping_every_record_is_an_error_that_says_why(tmp_path: Path) -> None:
    write_files(tmp_path, faq('{"question": "Why?", "answer": "Because."}', '{"question": "How?", "answer": "So."}'))
    with pytest.raises(DatasetError) as caught:
        convert(tmp_path, "jsonl", {"path": "faq.jsonl", "fields": FAQ, "on_bad_record": "skip"})
    assert str(caught.value) == (
        f"dataset: no train records are left (2 bad records skipped, 0 duplicates removed; first skipped: "
        f"{tmp_path}/faq.jsonl:1: field 'context' is missing (dataset.fields.input uses it)). "
        "Fix: add data or lower dataset.split.")


def test_convert_command_exits_1_with_the_error(tmp_path: Path) -> None:
    write_files(tmp_path, faq('{"question": "Why?", "answer": "Because."}'))
    result = CliRunner().invoke(app, ["data", "convert", "--format", "jsonl", "--field", r"input={question}\n{context}",
                                      "--field", "output=answer", str(tmp_path / "faq.jsonl"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert (f"{tmp_path}/faq.jsonl:1: field 'context' is missing (dataset.fields.input uses it). "
            "Fix: add 'context' to the record or change dataset.fields.input.") in " ".join(result.output.split())


SPEC_PROBLEMS = [
    pytest.param({"dataset.format": "csv", "dataset.path": "faq.csv",
                  "dataset.fields": {"input": "{question}\n{context}", "output": "answer"}},
                 "dataset.fields.input: needs column 'context', which the header of {dir}/faq.csv lacks (it has "
                 "'id', 'question', 'text', 'answer'). Fix: rename the column in the file or change the mapping "
                 "(and dataset.delimiter for TSV).", id="csv-header-checked-before-any-job"),
    pytest.param({"dataset.fields": {"input": "{question}", "output": "answer"}},
                 "dataset.fields: applies to jsonl, json and csv, not squad. Fix: remove it (this format builds "
                 "input with dataset.input_template).", id="fields-for-squad"),
    pytest.param({"dataset.input_template": "{context} {answer}"},
                 "dataset.input_template: uses ['answer'], which squad records do not have. "
                 "Fix: use only ['context', 'question', 'title'].", id="input-template-unknown-key"),
    pytest.param({"dataset.pubmedqa": {"label_field": "reasoning_required_pred"}},
                 "dataset.pubmedqa: applies to format pubmedqa, not squad. Fix: remove it or change dataset.format.",
                 id="options-of-another-format"),
    pytest.param({"dataset.on_bad_record": "ignore"},
                 "dataset.on_bad_record: 'ignore' is not one of 'error' or 'skip'. Fix: use one of the listed values.",
                 id="unknown-bad-record-policy"),
    pytest.param({"dataset.format": "jsonl", "dataset.path": "faq.csv",
                  "dataset.fields": {"input": "{question", "output": "answer"}},
                 "dataset.fields.input: '{question' is not a valid template (expected '}' before end of string). "
                 "Fix: write {field} placeholders, and {{ or }} for literal braces.", id="broken-field-template"),
]


@pytest.mark.parametrize(("changes", "message"), SPEC_PROBLEMS)
def test_dataset_spec_problems_are_reported_by_validate(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    spec = write_spec(tmp_path, changes)
    (tmp_path / "faq.csv").write_text("id,question,text,answer\nfaq-1,Why?,Because it is.,Because\n")
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    assert message.replace("{dir}", str(tmp_path)) in " ".join(result.output.split())
