"""`peftpipe data convert` and `peftpipe data stats` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.app import app
from tests.conftest import TINY_REPO_ID

DATA = Path(__file__).parent / "data" / "datasets"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["data", *args])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_convert_a_pubmedqa_fold_folder(tmp_path: Path) -> None:
    result = run("convert", "--format", "pubmedqa", str(DATA / "pubmedqa/pqal_fold0"), str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert stats["counts"] == {"train": 3, "validation": 1, "test": 2}
    assert stats["inputs"]["test"]["file"] == str(DATA / "pubmedqa/test_set.json")
    assert stats["inputs"]["ground_truth"]["file"] == str(DATA / "pubmedqa/test_ground_truth.json")
    assert [r["pmid"] for r in lines(tmp_path / "out/validation.jsonl")] == ["31110004"]
    assert "fingerprint " + stats["fingerprint"] in result.output


def test_convert_pubmedqa_with_the_guides_label(tmp_path: Path) -> None:
    result = run("convert", "--format", "pubmedqa", "--label-field", "reasoning_required_pred",
                 str(DATA / "pubmedqa/pqal_fold0"), str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    train = {r["pmid"]: (r["output"], r["final_decision"]) for r in lines(tmp_path / "out/train.jsonl")}
    assert train["31110003"] == ("yes", "maybe")


def test_convert_csv_with_a_field_mapping_typed_in_the_shell(tmp_path: Path) -> None:
    result = run("convert", "--format", "csv", "--field", r"input=Q: {question}\nC: {context}", "--field",
                 "output=answer", "--field", "metadata=id", "--validation-ratio", "0", "--test-ratio", "0",
                 str(DATA / "custom/faq.csv"), str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    records = sorted(lines(tmp_path / "out/train.jsonl"), key=lambda r: r["id"])
    assert records[1] == {"input": "Q: Which file formats can I upload?\nC: Uploads accept PDF, PNG and plain text "
                          "files up to 20 MB.", "output": "PDF, PNG and plain text", "id": "faq-2"}


def test_convert_squad2_with_given_splits_and_unanswerable_answer(tmp_path: Path) -> None:
    result = run("convert", "--format", "squad2", "--unanswerable", "answer", "--unanswerable-answer", "none",
                 "--test", str(DATA / "squad/squad-v2.0-sample.json"), str(DATA / "squad/squad-v1.1-sample.json"),
                 str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out/stats.json").read_text())["counts"] == {"train": 5, "validation": 0, "test": 4}
    test = lines(tmp_path / "out/test.jsonl")
    assert [(r["id"][-1], r["output"]) for r in test] == [("1", "the gravitational pull of the Moon"), ("2", "none"),
                                                          ("3", "two"), ("4", "none")]


def test_convert_reports_skips_and_duplicates(tmp_path: Path) -> None:
    source = tmp_path / "nemo.jsonl"
    source.write_text('{"input": "a", "output": "1"}\n{"input": "a", "output": "1"}\n{"input": "b", "output": ""}\n'
                      '{"input": "c", "output": "3"}\n')
    result = run("convert", "--format", "jsonl", "--on-bad-record", "skip", "--validation-ratio", "0",
                 "--test-ratio", "0.3", str(source), str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "read 4 source records; duplicates removed 1; skipped 1" in output
    assert "every skipped record and its reason:" in output


def test_invalid_options_exit_2_naming_the_key(tmp_path: Path) -> None:
    result = run("convert", "--format", "jsonl", "--field", "output=answer", str(DATA / "custom/faq.jsonl"),
                 str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "dataset.fields.input: is required but missing. Fix: add it." in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_stats_counts_tokens_as_training_does(tmp_path: Path, hub_root: Path) -> None:
    from transformers import AutoTokenizer

    model = hub_root / TINY_REPO_ID
    data = DATA / "custom/nemo.jsonl"
    result = run("stats", str(data), "--model", str(model), "--prompt-template", r"{input}\nAnswer: {output}",
                 "--max-seq-length", "40", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    totals = sorted(len(tokenizer(f"{r['input']}\nAnswer: ")["input_ids"])
                    + len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) + 1 for r in lines(data))
    assert figures["records"] == 2
    assert figures["total"] == {"p50": totals[0], "p95": totals[1], "max": totals[1]}
    assert figures["over_max_seq_length"] == sum(total > 40 for total in totals)
    table = run("stats", str(data), "--model", str(model), "--max-seq-length", str(totals[1] - 1))
    assert table.exit_code == 0, table.output
    assert f"1 of 2 records exceed max_seq_length {totals[1] - 1} and would be truncated" in table.output


def test_stats_rejects_a_file_that_is_not_nemo_jsonl(tmp_path: Path, hub_root: Path) -> None:
    result = run("stats", str(DATA / "custom/faq.jsonl"), "--model", str(hub_root / TINY_REPO_ID))
    assert result.exit_code == 1
    assert "faq.jsonl:1: not a NeMo record (text 'input' and 'output')" in " ".join(result.output.split())
