"""Each source format, read from a small file in its real layout, gives exactly these NeMo records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from peftpipe.data.convert import Sources, read_items, resolve_sources
from peftpipe.data.prepare import convert_dataset
from peftpipe.data.records import Omitted
from peftpipe.spec import DatasetSpec, resolve_relative

DATA = Path(__file__).parent / "data" / "datasets"
FAQ = {"input": "{question}\n{context}", "output": "answer"}
PUBMEDQA_TARGET = "\nTARGET: the answer to the question given the context is (yes|no|maybe): "


def items(fmt: str, relative: str, **options: Any) -> list[Any]:
    dataset = DatasetSpec(format=fmt, path=relative, **options)
    return list(read_items(dataset, DATA / relative, None, Sources()))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_squad_v11_one_record_per_question_with_the_first_answer() -> None:
    records = items("squad", "squad/squad-v1.1-sample.json")
    assert [r["id"] for r in records] == [f"5f1a0c2e9b7d4a000{i}" for i in range(1, 6)]
    assert records[1] == {
        "input": "Context: A glacier is a persistent body of dense ice that moves under its own weight. Glaciers form "
        "where snow accumulates faster than it melts over many years. About ten percent of the land surface of the "
        "Earth is covered by glacial ice.\nQuestion: How much of the land surface is covered by glacial ice?",
        "output": "About ten percent",
        "id": "5f1a0c2e9b7d4a0002",
        "title": "Glacier",
    }
    assert [r["title"] for r in records] == ["Glacier"] * 3 + ["Lighthouse"] * 2


def test_squad_input_template_is_configurable() -> None:
    records = items("squad", "squad/squad-v1.1-sample.json", input_template="[{title}] {question} || {context}")
    assert records[3]["input"] == ("[Lighthouse] When was the Pharos of Alexandria built? || The Pharos of Alexandria "
                                   "was built in the third century BC and stood for more than a thousand years. "
                                   "Earthquakes damaged it badly in the fourteenth century.")


def test_squad_v2_unanswerable_questions_are_skipped_and_counted_by_default(tmp_path: Path) -> None:
    records = items("squad2", "squad/squad-v2.0-sample.json")
    assert records[1] == Omitted("unanswerable") and records[3] == Omitted("unanswerable")
    assert [(r["id"], r["output"], r["is_impossible"]) for r in records if isinstance(r, dict)] == [
        ("6a00b7c1d2e3f40001", "the gravitational pull of the Moon", False),
        ("6a00b7c1d2e3f40003", "two", False),
    ]
    dataset = DatasetSpec(format="squad2", path="in.json", split={"validation": 0.0, "test": 0.0})
    stats = convert_dataset(dataset, Sources(single=DATA / "squad/squad-v2.0-sample.json"), tmp_path / "out", 1)
    assert stats["omitted"] == {"unanswerable": 2}
    assert stats["counts"] == {"train": 2, "validation": 0, "test": 0}
    assert stats["records_read"] == 4


def test_squad_v2_unanswerable_questions_can_map_to_an_answer() -> None:
    records = items("squad2", "squad/squad-v2.0-sample.json",
                    squad2={"unanswerable": "answer", "unanswerable_answer": "no answer in the context"})
    assert [(r["id"], r["output"], r["is_impossible"]) for r in records] == [
        ("6a00b7c1d2e3f40001", "the gravitational pull of the Moon", False),
        ("6a00b7c1d2e3f40002", "no answer in the context", True),
        ("6a00b7c1d2e3f40003", "two", False),
        ("6a00b7c1d2e3f40004", "no answer in the context", True),
    ]
    assert records[3]["input"].endswith("Question: Who published the first tide table of London Bridge?")


def test_jsquad_uses_the_japanese_template_and_replaces_sep() -> None:
    records = items("jsquad", "jsquad/valid-v1.1-sample.json")
    assert records[0] == {
        "input": "文章：富士山\n富士山（ふじさん）は、標高3776メートルの日本最高峰の山で、静岡県と山梨県にまたがる活火山である。\n"
        "質問：富士山の標高は何メートルか。",
        "output": "3776メートル",
        "id": "a90001p0q0",
        "title": "富士山",
    }
    kept = items("jsquad", "jsquad/valid-v1.1-sample.json", jsquad={"sep_replacement": None})
    assert kept[2]["input"] == "文章：富士山 [SEP] 富士山は2013年に世界文化遺産に登録された。\n質問：富士山が世界文化遺産に登録されたのは何年か。"


def test_jsquad_sep_in_titles_is_replaced_too(tmp_path: Path) -> None:
    source = tmp_path / "jsquad.json"
    source.write_text(json.dumps({"data": [{"title": "東京 [SEP] 歴史", "paragraphs": [{
        "context": "東京 [SEP] 江戸は1868年に東京と改称された。",
        "qas": [{"id": "q1", "question": "江戸が東京と改称されたのは何年か。",
                 "answers": [{"text": "1868年", "answer_start": 8}], "is_impossible": False}]}]}]},
        ensure_ascii=False), encoding="utf-8")
    dataset = DatasetSpec(format="jsquad", path=str(source), input_template="{title}|{context}|{question}",
                          jsquad={"sep_replacement": " / "})
    [record] = list(read_items(dataset, source, None, Sources()))
    assert record["input"] == "東京 / 歴史|東京 / 江戸は1868年に東京と改称された。|江戸が東京と改称されたのは何年か。"
    assert record["title"] == "東京 / 歴史"


def test_japanese_text_round_trips_as_readable_utf8(tmp_path: Path) -> None:
    dataset = DatasetSpec(format="jsquad", path="in.json", split={"validation": 0.0, "test": 0.0})
    out = tmp_path / "out"
    convert_dataset(dataset, Sources(single=DATA / "jsquad/valid-v1.1-sample.json"), out, 1)
    raw = (out / "train.jsonl").read_bytes()
    assert "富士山".encode() in raw and b"\\u" not in raw
    written = sorted(read_jsonl(out / "train.jsonl"), key=lambda r: r["id"])
    assert written == sorted(items("jsquad", "jsquad/valid-v1.1-sample.json"), key=lambda r: r["id"])


def test_pubmedqa_builds_the_guide_prompt_and_uses_the_gold_label() -> None:
    records = items("pubmedqa", "pubmedqa/ori_pqal.json")
    assert [r["pmid"] for r in records] == [f"3111000{i}" for i in range(1, 7)]
    assert records[1] == {
        "input": "QUESTION: Is hand-grip strength associated with hospital length of stay in older patients?\n"
        "CONTEXT: Muscle weakness predicts poor outcomes in older adults.\nWe measured grip strength at admission in "
        "310 patients aged 70 or older and recorded the length of stay." + PUBMEDQA_TARGET,
        "output": "no",
        "pmid": "31110002",
    }
    assert [r["output"] for r in records] == ["yes", "no", "maybe", "yes", "yes", "no"]


def test_pubmedqa_label_field_is_chosen_in_the_spec() -> None:
    records = items("pubmedqa", "pubmedqa/ori_pqal.json", pubmedqa={"label_field": "reasoning_required_pred"})
    assert [r["output"] for r in records] == ["yes", "yes", "yes", "yes", "yes", "no"]
    # The gold label travels along as metadata, so predictions can still be scored against it.
    assert [r["final_decision"] for r in records] == ["yes", "no", "maybe", "yes", "yes", "no"]


def test_pubmedqa_fold_files_with_ground_truth_beside_the_test_set(tmp_path: Path) -> None:
    dataset = DatasetSpec(format="pubmedqa", train="pqal_fold0/train_set.json",
                          validation="pqal_fold0/dev_set.json", test="test_set.json")
    sources = resolve_sources(dataset, lambda rel: resolve_relative(DATA / "pubmedqa", rel))
    assert sources.ground_truth == DATA / "pubmedqa/test_ground_truth.json"
    stats = convert_dataset(dataset, sources, tmp_path / "out", 1)
    assert stats["counts"] == {"train": 3, "validation": 1, "test": 2}
    test = read_jsonl(tmp_path / "out/test.jsonl")
    assert [(r["pmid"], r["output"]) for r in test] == [("31110002", "no"), ("31110006", "no")]
    assert set(stats["inputs"]) == {"train", "validation", "test", "ground_truth"}


def test_pubmedqa_test_labels_come_from_the_ground_truth_file(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    unlabelled = {pmid: {k: v for k, v in entry.items() if k != "final_decision"}
                  for pmid, entry in json.loads((DATA / "pubmedqa/test_set.json").read_text()).items()}
    (folder / "test_set.json").write_text(json.dumps(unlabelled, indent=4))
    shutil.copy(DATA / "pubmedqa/test_ground_truth.json", folder)
    dataset = DatasetSpec(format="pubmedqa", train="train.json", test="test_set.json")
    truth = folder / "test_ground_truth.json"
    records = list(read_items(dataset, folder / "test_set.json", "test", Sources(ground_truth=truth)))
    assert [(r["pmid"], r["output"]) for r in records] == [("31110002", "no"), ("31110006", "no")]


def test_custom_jsonl_with_a_field_mapping_keeps_the_other_fields_as_metadata() -> None:
    records = items("jsonl", "custom/faq.jsonl", fields=FAQ)
    assert records[2] == {"input": "パスワードの有効期限は？\nパスワードは90日ごとに変更が必要です。", "output": "90日",
                          "id": "faq-3", "lang": "ja"}
    assert [r["id"] for r in records] == ["faq-1", "faq-2", "faq-3"]
    listed = items("jsonl", "custom/faq.jsonl", fields={**FAQ, "metadata": ["id"]})
    assert listed[0] == {"input": "How do I reset my password?\nPasswords are reset from the sign-in page with the "
                         "link 'Forgot password'.", "output": "Use the 'Forgot password' link on the sign-in page.",
                         "id": "faq-1"}


def test_custom_json_array() -> None:
    assert items("json", "custom/faq.json", fields=FAQ) == [
        {"input": "How do I reset my password?\nPasswords are reset from the sign-in page with the link "
         "'Forgot password'.", "output": "Use the 'Forgot password' link on the sign-in page.", "id": "faq-1"},
        {"input": "Which file formats can I upload?\nUploads accept PDF, PNG and plain text files up to 20 MB.",
         "output": "PDF, PNG and plain text", "id": "faq-2"},
    ]


def test_custom_csv_with_quoted_commas_and_a_field_over_two_lines() -> None:
    records = items("csv", "custom/faq.csv", fields=FAQ)
    assert [r["id"] for r in records] == ["faq-1", "faq-2", "faq-4"]
    assert records[1]["output"] == "PDF, PNG and plain text"
    assert records[2] == {"input": "What are the support hours?\nSupport answers on weekdays.\nWeekend requests are "
                          "answered on Monday.", "output": "Weekdays", "id": "faq-4"}


def test_custom_tsv_is_read_with_a_tab_delimiter() -> None:
    records = items("csv", "custom/faq.tsv", fields=FAQ)
    assert records == [
        {"input": "Which file formats can I upload?\nUploads accept PDF, PNG and plain text files up to 20 MB.",
         "output": "PDF, PNG and plain text", "id": "faq-2"},
        {"input": "パスワードの有効期限は？\nパスワードは90日ごとに変更が必要です。", "output": "90日", "id": "faq-3"},
    ]


def test_nemo_jsonl_passes_through_unchanged(tmp_path: Path) -> None:
    source = DATA / "custom/nemo.jsonl"
    assert items("jsonl", "custom/nemo.jsonl") == read_jsonl(source)
    dataset = DatasetSpec(format="jsonl", path="in.jsonl", split={"validation": 0.0, "test": 0.0})
    convert_dataset(dataset, Sources(single=source), tmp_path / "out", 1)
    assert sorted(read_jsonl(tmp_path / "out/train.jsonl"), key=str) == sorted(read_jsonl(source), key=str)

