"""The run spec's ``dataset`` section: the file or files, their format, the split and the templates.

Kept beside :mod:`peftpipe.spec`, which re-exports every name (``from peftpipe.spec import DatasetSpec``
keeps working); rules that touch the file system live in :mod:`peftpipe.validation`.
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, field_validator

from peftpipe.spec_base import StrictModel


class Split(StrictModel):
    """Fractions of a single dataset file held out for validation and test."""

    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of records held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of records held out for test.")


DatasetFormat = Literal["squad", "squad2", "pubmedqa", "jsquad", "jsonl", "json", "csv"]
SQUAD_FORMATS = ("squad", "squad2", "jsquad")
CUSTOM_FORMATS = ("jsonl", "json", "csv")

# Per-format default of `input_template`; JSQuAD gets a Japanese one because its questions are Japanese.
DEFAULT_INPUT_TEMPLATES: dict[str, str] = {
    "squad": "Context: {context}\nQuestion: {question}",
    "squad2": "Context: {context}\nQuestion: {question}",
    "jsquad": "文章：{context}\n質問：{question}",
    # The prompt of NVIDIA's PubMedQA PEFT guide (preprocess_to_jsonl.py), contexts joined by newlines.
    "pubmedqa": "QUESTION: {question}\nCONTEXT: {context}\nTARGET: the answer to the question given the context is "
    "(yes|no|maybe): ",
}
# Placeholders an input_template may use, per format.
TEMPLATE_KEYS: dict[str, set[str]] = {
    "squad": {"context", "question", "title"},
    "squad2": {"context", "question", "title"},
    "jsquad": {"context", "question", "title"},
    "pubmedqa": {"context", "question", "pmid"},
}


def template_fields(template: str) -> list[str]:
    """The ``{name}`` placeholders of a str.format template, in order (raises ValueError if malformed)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


class Squad2Options(StrictModel):
    """How SQuAD v2.0 questions without an answer (``is_impossible: true``) are treated."""

    unanswerable: Literal["skip", "answer"] = Field(
        "skip", description="skip: leave them out and count them in stats.json; answer: keep them with "
        "`unanswerable_answer` as the output."
    )
    unanswerable_answer: str = Field(
        "unanswerable", min_length=1, description="Output text of an unanswerable question when unanswerable: answer."
    )


class JsquadOptions(StrictModel):
    """JSQuAD (JGLUE) joins a page title and its paragraph with `` [SEP] ``, a BERT separator token."""

    sep_replacement: str | None = Field(
        "\n", description="Text that replaces ' [SEP] ' in titles and contexts (a causal LM has no [SEP] token); "
        "null keeps '[SEP]' verbatim."
    )


PubmedqaLabel = Literal["final_decision", "reasoning_required_pred", "reasoning_free_pred"]


class PubmedqaOptions(StrictModel):
    """Which PubMedQA field is the output, and where the test set's ground truth is."""

    label_field: PubmedqaLabel = Field(
        "final_decision", description="final_decision is the expert gold label; the reasoning_*_pred fields are "
        "model predictions shipped with the data (NVIDIA's guide trains on reasoning_required_pred)."
    )
    ground_truth: str | None = Field(
        None, description="test_ground_truth.json (PMID -> label) for a test set without labels; default: "
        "test_ground_truth.json next to the test file, if present.", examples=["pubmedqa/test_ground_truth.json"],
    )


class FieldMapping(StrictModel):
    """How a custom record (JSONL line, JSON array element, CSV row) becomes input and output.

    A value with ``{name}`` placeholders is a template over the record's fields; a plain value
    names one field.
    """

    input: str = Field(description="Template or field name for `input`, e.g. \"{question}\\n{context}\".",
                       examples=["{question}\n{context}"])
    output: str = Field(description="Template or field name for `output`, e.g. answer.", examples=["answer"])
    metadata: list[str] | None = Field(
        None, description="Source fields kept as metadata keys; default: every field the mapping does not use.",
        examples=[["id"]],
    )

    @field_validator("input", "output")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        try:
            fields = template_fields(value)
        except ValueError as error:
            raise ValueError(f"{value!r} is not a valid template ({error}). Fix: write {{field}} placeholders, "
                             "and {{ or }} for literal braces.") from None
        if any(not name for name in fields):
            raise ValueError(f"{value!r} has an empty {{}} placeholder. Fix: name the field, e.g. {{question}}.")
        parts = string.Formatter().parse(value)
        if any(name and (spec or conversion or "." in name or "[" in name) for _, name, spec, conversion in parts):
            raise ValueError(f"{value!r} formats or indexes a field; placeholders here are plain field names. "
                             "Fix: write {field} only.")
        return value

    def used_fields(self, target: str) -> list[str]:
        """Source fields that ``target`` (input or output) reads."""
        value = getattr(self, target)
        fields = template_fields(value)
        return fields if fields else [value]


class DatasetSpec(StrictModel):
    """The data: its format, its files and how a record becomes a prompt."""

    format: DatasetFormat = Field(
        description="squad (SQuAD v1.1), squad2 (SQuAD v2.0), pubmedqa (PubMedQA JSON keyed by PMID), jsquad "
        "(JGLUE JSQuAD), jsonl, json (array of objects) or csv (also TSV)."
    )
    path: str | None = Field(None, description="One file, split by `split` with `train.seed`.",
                              examples=["data/squad-v1.1.json"])
    train: str | None = Field(None, description="Training file (instead of path).", examples=["data/train.jsonl"])
    validation: str | None = Field(None, description="Validation file (with train).",
                                    examples=["data/validation.jsonl"])
    test: str | None = Field(None, description="Test file (with train).", examples=["data/test.jsonl"])
    split: Split = Field(default_factory=Split, description="Held-out fractions when `path` is one file.")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first bad record; skip: leave it out and list it in stats.json."
    )
    input_template: str | None = Field(
        None,
        description="How a SQuAD, JSQuAD or PubMedQA record becomes `input` (keys: context, question, and title or "
        "pmid); default: the format's template.",
        examples=["Context: {context}\nQuestion: {question}"],
    )
    prompt_template: str = Field(
        "{input}\nAnswer: {output}",
        description="NeMo-style prompt over record keys; `{output}` must come last.",
        examples=["### Question\n{input}\n### Answer\n{output}"],
    )
    fields: FieldMapping | None = Field(
        None, description="jsonl, json, csv: how records become input/output; unset: records already have "
        "input and output (NeMo JSONL), checked and passed through."
    )
    delimiter: str | None = Field(
        None, min_length=1, max_length=1, description="csv: the field delimiter; default: tab for .tsv, comma otherwise.",
        examples=[";"],
    )
    squad2: Squad2Options = Field(default_factory=Squad2Options, description="squad2 only.")
    jsquad: JsquadOptions = Field(default_factory=JsquadOptions, description="jsquad only.")
    pubmedqa: PubmedqaOptions = Field(default_factory=PubmedqaOptions, description="pubmedqa only.")
    cache: bool = Field(True, description="Reuse a prepared copy when inputs and options are unchanged.")
    cache_dir: str | None = Field(
        None, description="Prepared datasets, keyed by a fingerprint of inputs and options; default: "
        "<workdir>/data-cache (relative to the working directory).", examples=["/shared/peftpipe-data-cache"],
    )

    @field_validator("prompt_template")
    @classmethod
    def _output_last(cls, template: str) -> str:
        fields = template_fields(template)
        if "output" not in fields or not template.rstrip(" ").endswith("{output}"):
            raise ValueError(
                f"{template!r} must end with the label placeholder {{output}}, as NeMo requires. "
                "Fix: move {output} to the end, e.g. '{input}\\nAnswer: {output}'."
            )
        if fields.count("output") > 1:
            raise ValueError("{output} appears more than once. Fix: use it once, at the end.")
        return template

    @property
    def resolved_input_template(self) -> str:
        """The input template in force: the spec's, else the format's default."""
        return self.input_template or DEFAULT_INPUT_TEMPLATES.get(self.format, "")
