"""``peftpipe data``: convert datasets into NeMo JSONL and measure them in tokens.

``convert`` runs the same core as the flow's prepare-data stage; its options are the keys of a
run spec's ``dataset`` section and are checked the same way.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from peftpipe.data.convert import resolve_sources
from peftpipe.data.prepare import convert_dataset
from peftpipe.data.records import DatasetError
from peftpipe.spec import DatasetSpec, TrainSpec, resolve_relative
from peftpipe.validation import SpecError, load_dataset_spec

data_app = typer.Typer(help="Convert datasets into NeMo JSONL and measure them in tokens.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

INVALID_OPTIONS_EXIT = 2
BAD_DATA_EXIT = 1


class DataFormat(str, Enum):
    squad = "squad"
    squad2 = "squad2"
    pubmedqa = "pubmedqa"
    jsquad = "jsquad"
    jsonl = "jsonl"
    json = "json"
    csv = "csv"


class BadRecordPolicy(str, Enum):
    error = "error"
    skip = "skip"


def _unescape(text: str) -> str:
    r"""Shell-typed ``\n``, ``\t`` and ``\\`` become the characters (other text, Japanese included, is kept)."""
    return re.sub(r"\\([\\nt])", lambda m: {"\\": "\\", "n": "\n", "t": "\t"}[m[1]], text)


def _field_mapping(pairs: list[str]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ("input", "output", "metadata"):
            errors.print(f"--field {pair!r}: expected input=TEMPLATE, output=FIELD or metadata=A,B", markup=False,
                         soft_wrap=True)
            raise typer.Exit(INVALID_OPTIONS_EXIT)
        mapping[key] = [v for v in value.split(",") if v] if key == "metadata" else _unescape(value)
    return mapping


def _pubmedqa_folder(folder: Path) -> dict[str, str]:
    """Files of a folder laid out by PubMedQA's split_dataset.py (test_set.json sits one level up)."""
    if (folder / "train_set.json").is_file():
        files = {"train": folder / "train_set.json"}
        if (folder / "dev_set.json").is_file():
            files["validation"] = folder / "dev_set.json"
        for candidate in (folder / "test_set.json", folder.parent / "test_set.json"):
            if candidate.is_file():
                files["test"] = candidate
                break
        return {key: str(path) for key, path in files.items()}
    if (folder / "ori_pqal.json").is_file():
        return {"path": str(folder / "ori_pqal.json")}
    errors.print(f"INPUT: {folder} holds neither train_set.json (a pqal_foldN folder) nor ori_pqal.json. "
                 "Fix: pass a file, or the folder that split_dataset.py wrote.", markup=False, soft_wrap=True)
    raise typer.Exit(INVALID_OPTIONS_EXIT)


@data_app.command("convert")
def convert(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="File to convert (split by ratio unless "
                                               "--test is given), or a PubMedQA pqal_foldN folder.")],
    output_dir: Annotated[Path, typer.Argument(help="Receives train.jsonl, validation.jsonl, test.jsonl, "
                                               "stats.json.")],
    format_: Annotated[DataFormat, typer.Option("--format", help="Format of INPUT.")],
    validation: Annotated[Path | None, typer.Option(help="Given validation file (INPUT is then the train file).")]
    = None,
    test: Annotated[Path | None, typer.Option(help="Given test file (INPUT is then the train file).")] = None,
    validation_ratio: Annotated[float, typer.Option(help="Held-out fraction when splitting INPUT.")] = 0.1,
    test_ratio: Annotated[float, typer.Option(help="Held-out fraction when splitting INPUT.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = TrainSpec.model_fields["seed"].default,
    on_bad_record: Annotated[BadRecordPolicy, typer.Option(help="error: stop at the first bad record; skip: "
                                                           "leave it out and list it in stats.json.")]
    = BadRecordPolicy.error,
    input_template: Annotated[str | None, typer.Option(help=r"SQuAD/JSQuAD/PubMedQA input template, e.g. "
                                                       r"'Q: {question}\nC: {context}'.")] = None,
    field: Annotated[list[str] | None, typer.Option(help=r"jsonl/json/csv mapping, repeatable: "
                                                    r"--field 'input={question}\n{context}' --field output=answer "
                                                    "[--field metadata=id,source].")] = None,
    delimiter: Annotated[str | None, typer.Option(help="csv delimiter (default: tab for .tsv, else comma).")]
    = None,
    unanswerable: Annotated[str | None, typer.Option(help="squad2: skip (counted) or answer.")] = None,
    unanswerable_answer: Annotated[str | None, typer.Option(help="squad2: output of unanswerable questions.")]
    = None,
    label_field: Annotated[str | None, typer.Option(help="pubmedqa: final_decision (gold, default), "
                                                    "reasoning_required_pred or reasoning_free_pred.")] = None,
    ground_truth: Annotated[Path | None, typer.Option(help="pubmedqa: test_ground_truth.json for the test file.")]
    = None,
) -> None:
    """Convert INPUT into NeMo JSONL splits in OUTPUT_DIR and report what was kept, removed and skipped."""
    raw: dict[str, Any] = {"format": format_.value, "on_bad_record": on_bad_record.value}
    if input_path.is_dir() and format_ is DataFormat.pubmedqa and validation is None and test is None:
        raw.update(_pubmedqa_folder(input_path))
    elif validation is not None or test is not None:
        raw.update(train=str(input_path), validation=validation and str(validation), test=test and str(test))
    else:
        raw.update(path=str(input_path), split={"validation": validation_ratio, "test": test_ratio})
    if input_template is not None:
        raw["input_template"] = _unescape(input_template)
    if field:
        raw["fields"] = _field_mapping(field)
    if delimiter is not None:
        raw["delimiter"] = _unescape(delimiter)
    squad2 = {k: v for k, v in {"unanswerable": unanswerable, "unanswerable_answer": unanswerable_answer}.items()
              if v is not None}
    if squad2:
        raw["squad2"] = squad2
    pubmedqa = {k: v for k, v in {"label_field": label_field, "ground_truth": ground_truth and str(ground_truth)
                                  }.items() if v is not None}
    if pubmedqa:
        raw["pubmedqa"] = pubmedqa
    try:
        dataset = load_dataset_spec(raw, Path.cwd())
    except SpecError as error:
        errors.print("[bold red]invalid options[/]")
        for issue in error.issues:
            errors.print(f"  {issue}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID_OPTIONS_EXIT) from None
    sources = resolve_sources(dataset, lambda relative: resolve_relative(Path.cwd(), relative))
    try:
        stats = convert_dataset(dataset, sources, output_dir, seed)
    except DatasetError as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(BAD_DATA_EXIT) from None
    _print_conversion(stats, output_dir)


def _print_conversion(stats: dict[str, Any], output_dir: Path) -> None:
    table = Table(title=f"{stats['format']} -> {output_dir}")
    for column in ("split", "records", "file"):
        table.add_column(column)
    for split, count in stats["counts"].items():
        table.add_row(split, str(count), str(output_dir / f"{split}.jsonl"))
    console.print(table)
    console.print(f"read {stats['records_read']} source records; duplicates removed "
                  f"{stats['duplicates_removed']}; skipped {stats['skipped_count']}"
                  + "".join(f"; omitted ({reason}) {n}" for reason, n in stats["omitted"].items()), highlight=False)
    if stats["skipped_count"]:
        console.print(f"every skipped record and its reason: {output_dir / 'stats.json'} (skipped)", highlight=False)
    console.print(f"fingerprint {stats['fingerprint']}", highlight=False)


@data_app.command("stats")
def stats(
    file: Annotated[Path, typer.Argument(help="A NeMo JSONL file (input/output per line).")],
    model: Annotated[Path, typer.Option(help="Model directory whose tokenizer counts the tokens.")],
    max_seq_length: Annotated[int, typer.Option(help="Training sequence length; longer records are truncated.")]
    = TrainSpec.model_fields["max_seq_length"].default,
    prompt_template: Annotated[str, typer.Option(help="The run spec's dataset.prompt_template.")]
    = DatasetSpec.model_fields["prompt_template"].default,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Count FILE's records and their token lengths (p50/p95/max) with MODEL's tokenizer."""
    from peftpipe.data.stats import token_stats

    for option, path, kind in (("FILE", file, "file"), ("--model", model, "directory")):
        if not (path.is_file() if kind == "file" else path.is_dir()):
            errors.print(f"{option}: {path} is not a {kind}. Fix: correct the path.", markup=False, soft_wrap=True)
            raise typer.Exit(INVALID_OPTIONS_EXIT)
    try:
        figures = token_stats(file, model, max_seq_length, _unescape(prompt_template))
    except DatasetError as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(BAD_DATA_EXIT) from None
    if as_json:
        print(json.dumps(figures.as_dict(), indent=2))
        return
    table = Table(title=f"{file}: {figures.records} records, tokens per record")
    for column in ("part", "p50", "p95", "max"):
        table.add_column(column, justify="right" if column != "part" else "left")
    for part in ("prompt", "output", "total"):
        lengths = getattr(figures, part)
        table.add_row(part, str(lengths.p50), str(lengths.p95), str(lengths.max))
    console.print(table)
    console.print(f"{figures.over_max_seq_length} of {figures.records} records exceed max_seq_length "
                  f"{figures.max_seq_length} and would be truncated", highlight=False)
