"""``peftpipe init``: a commented starter spec for a model and a dataset format.

Each key is written with its description from the spec reference above it, so the file
explains itself; the values are the defaults and what the user passed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from peftpipe.spec import CUSTOM_FORMATS, DEFAULT_INPUT_TEMPLATES
from peftpipe.spec_reference import entries, yaml_text

def starter_values(name: str, model: str, dataset_format: str, data: str) -> dict[str, Any]:
    """The starter spec as a nested mapping; ``model`` is a Hub repo id or a local directory."""
    local = Path(model).expanduser()  # as typed on the command line: relative to the working directory
    dataset: dict[str, Any] = {"format": dataset_format, "path": data,
                               "split": {"validation": 0.1, "test": 0.1}}
    if dataset_format in DEFAULT_INPUT_TEMPLATES:
        dataset["input_template"] = DEFAULT_INPUT_TEMPLATES[dataset_format]
    dataset["prompt_template"] = "{input}\nAnswer: {output}"
    if dataset_format in CUSTOM_FORMATS:
        dataset["fields"] = {"input": "{question}", "output": "answer"}
    return {
        "name": name,
        "model": {"path": str(local.resolve())} if local.is_dir() else {"repo_id": model, "revision": "main"},
        "dataset": dataset,
        # auto: the model's own projections, found by inspecting it (any family), recorded with the run.
        "peft": {"method": "lora", "lora": {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "auto"}},
        "train": {"global_batch_size": 8, "micro_batch_size": 4, "max_steps": 100, "learning_rate": 1e-4,
                  "warmup_steps": 0, "max_seq_length": 512, "checkpoint_every": 50, "seed": 1234},
        "engine": "hf",
        "execution": {"backend": "local"},
        "evaluation": {"metrics": ["exact_match", "exact_match_normalized", "f1", "loss"],
                       "tokens_to_generate": 32, "select_metric": "f1"},
        "artifacts": {"store": "file://runs/artifacts"},
        "workdir": "runs",
    }


def commented_yaml(values: dict[str, Any], header: str) -> str:
    """``values`` as block YAML with each key's reference description as a comment above it."""
    descriptions = {entry.key: entry.description for entry in entries()}
    lines = [f"# {line}" for line in header.splitlines()] + [""]

    def emit(node: dict[str, Any], prefix: str, depth: int) -> None:
        indent = "  " * depth
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            for line in textwrap.wrap(descriptions.get(dotted, ""), width=max(40, 100 - len(indent))):
                lines.append(f"{indent}# {line}")
            if isinstance(value, dict) and dotted in descriptions and _is_section(dotted):
                lines.append(f"{indent}{key}:")
                emit(value, f"{dotted}.", depth + 1)
            else:
                lines.append(f"{indent}{key}: {yaml_text(value)}")
            if depth == 0:
                lines.append("")

    emit(values, "", 0)
    return "\n".join(lines).rstrip("\n") + "\n"


def _is_section(key: str) -> bool:
    return any(entry.key == key and entry.section for entry in entries())


def starter_spec(name: str, model: str, dataset_format: str, data: str) -> str:
    header = (f"Starter run spec written by `peftpipe init` for {model} and {dataset_format} data.\n"
              "Every key is in docs/spec.md; `peftpipe spec explain KEY` prints one. Check it with\n"
              "`peftpipe validate THIS_FILE` and run it with `peftpipe run THIS_FILE`.")
    return commented_yaml(starter_values(name, model, dataset_format, data), header)
