"""SQuAD v1.1 JSON (``data[].paragraphs[].qas[]``) into NeMo records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from peftpipe.data.records import DatasetError, Record


def read_squad(path: Path, input_template: str) -> Iterator[Record]:
    """One record per question: ``input`` from the template, ``output`` the first answer."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DatasetError(f"{path}: not SQuAD JSON (no top-level 'data' list)")
    for article in document["data"]:
        title = article.get("title", "")
        for paragraph in article.get("paragraphs", []):
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers") or []
                if not answers:
                    raise DatasetError(f"{path}: question {qa.get('id')!r} has no answers")
                yield {
                    "input": input_template.format(context=context, question=qa["question"], title=title),
                    "output": answers[0]["text"],
                    "id": qa["id"],
                    "title": title,
                }
