"""SQuAD v1.1, SQuAD v2.0 and JSQuAD (JGLUE) JSON into NeMo records.

All three share the layout ``data[].title``, ``data[].paragraphs[].context`` and
``paragraphs[].qas[]`` with ``question``, ``id`` and ``answers[].text``; v2.0 adds
``is_impossible``. SQuAD files are written on one line, so a bad question is located by its
path in the document (``data[3].paragraphs[0].qas[2]``) and its id, not by a line number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftpipe.data.records import BadRecord, DatasetError, Item, Omitted, load_json_document
from peftpipe.spec import DatasetSpec

JSQUAD_SEPARATOR = " [SEP] "


def read_squad(path: Path, dataset: DatasetSpec) -> Iterator[Item]:
    """One item per question: ``input`` from the template, ``output`` the first answer."""
    document = load_json_document(path)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DatasetError(
            f"{path}: not SQuAD JSON (no top-level 'data' list). Fix: pass a SQuAD-layout file or choose the "
            "format that matches it."
        )
    template = dataset.resolved_input_template
    for a, article in enumerate(document["data"]):
        if not isinstance(article, dict):
            yield BadRecord(path, None, f"data[{a}]", "the article is not an object", "remove it or correct the structure")
            continue
        title = _text(article.get("title"), dataset)
        for p, paragraph in enumerate(article.get("paragraphs") or []):
            where = f"data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip():
                count = len(paragraph.get("qas") or []) if isinstance(paragraph, dict) else 0
                left_out = f"{count} question{'' if count == 1 else 's'} left out"
                yield BadRecord(path, None, where, f"the paragraph has no context text ({left_out})",
                                "add the paragraph's context")
                continue
            context = _text(context, dataset)
            for q, qa in enumerate(paragraph.get("qas") or []):
                yield _question(path, f"{where}.qas[{q}]", qa, context, title, template, dataset)


def _question(path: Path, where: str, qa: Any, context: str, title: str, template: str,
              dataset: DatasetSpec) -> Item:
    if not isinstance(qa, dict):
        return BadRecord(path, None, where, "the question entry is not an object", "remove it or correct the structure")
    if qa.get("id") is not None:
        where = f"{where} (id {qa['id']!r})"
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        return BadRecord(path, None, where, "the entry has no question text", "add the question or remove the entry")
    metadata: dict[str, Any] = {"id": qa.get("id"), "title": title}
    if qa.get("is_impossible"):
        if dataset.format != "squad2":
            return BadRecord(path, None, where, f"the question is marked is_impossible, which format {dataset.format} does not allow",
                             "convert SQuAD v2.0 data with format squad2")
        if dataset.squad2.unanswerable == "skip":
            return Omitted("unanswerable")
        output = dataset.squad2.unanswerable_answer
    else:
        answers = qa.get("answers")
        if not isinstance(answers, list) or not answers:
            fix = ("mark it is_impossible: true or add an answer" if dataset.format == "squad2"
                   else "add an answer, or use format squad2 for SQuAD v2.0 data")
            return BadRecord(path, None, where, "the question has no answers", fix)
        first = answers[0]
        output = first.get("text") if isinstance(first, dict) else None
        if not isinstance(output, str) or not output.strip():
            return BadRecord(path, None, where, "the question has an empty output (answers[0].text is empty)",
                             "give the first answer a text")
    if dataset.format == "squad2":
        metadata["is_impossible"] = bool(qa.get("is_impossible"))
    source = {"context": context, "question": question, "title": title}
    return {"input": template.format(**source), "output": output, **metadata}


def _text(value: Any, dataset: DatasetSpec) -> str:
    """Titles and contexts; JSQuAD's ``[SEP]`` joints are replaced as the spec says."""
    text = value if isinstance(value, str) else ""
    replacement = dataset.jsquad.sep_replacement
    if dataset.format == "jsquad" and replacement is not None:
        text = text.replace(JSQUAD_SEPARATOR, replacement).replace("[SEP]", replacement)
    return text
