"""What goes into AutoModel and what comes back, as the pipeline's own files. No torch here.

In: the prepared splits as ``{"prompt", "answer"}`` lines, the prompt being the spec's
``prompt_template`` up to ``{output}``, so the text AutoModel trains on is the text the evaluate
stage prompts with (AutoModel joins prompt and answer with one space, which is why validation
asks the template to end with ``' {output}'``).

Out: AutoModel's latest checkpoint holds a standard PEFT adapter folder (``model/adapter_config.json``
and ``adapter_model.safetensors``); its ``training.jsonl`` / ``validation.jsonl`` hold per-step
metrics. They become ``finetune/adapter/``, ``finetune/metrics.jsonl`` and ``train_summary.json``,
the files the evaluate and publish stages read for every engine.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from peftpipe.engines.automodel.config import ANSWER_COLUMN, PROMPT_COLUMN
from peftpipe.engines.automodel.layout import AutomodelPaths
from peftpipe.paths import RunPaths

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# AutoModel's checkpoint folders are named after the 0-based step that wrote them.
CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)_step_(\d+)$")
# Printed by rank 0 when a run resumes (nemo_automodel/recipes/base_recipe.py, load_checkpoint).
RESUMED = re.compile(r"Loading checkpoint from (\S+)")


def prompt_prefix(template: str) -> str:
    return template[: template.rindex("{output}")]


def write_training_data(paths: RunPaths, prompt_template: str) -> None:
    """``data/automodel/{train,validation}.jsonl`` from the prepared splits (rewritten each attempt: cheap)."""
    layout = AutomodelPaths(paths)
    prefix = prompt_prefix(prompt_template)
    for split in ("train", "validation"):
        target = layout.data_file(split)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for line in paths.data_file(split).read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                prompt = prefix.format(**record).rstrip(" ")
                lines.append(json.dumps({PROMPT_COLUMN: prompt, ANSWER_COLUMN: record["output"]}, ensure_ascii=False))
        partial = target.with_suffix(".partial")
        partial.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        partial.replace(target)


def completed_steps(checkpoint: Path) -> int | None:
    """Optimizer steps done when ``checkpoint`` (``epoch_E_step_S``) was written: S + 1."""
    match = CHECKPOINT_NAME.match(checkpoint.name)
    return int(match.group(2)) + 1 if match else None


def resumed_from(log_text: str) -> int | None:
    """The step an attempt resumed at, from AutoModel's own log line (the last run's, as a log of a run id
    started again is appended to); None for a fresh start."""
    found = RESUMED.findall(log_text)
    return completed_steps(Path(found[-1].rstrip("/"))) if found else None


# Rank 0's per-step lines (recipes/llm/train_ft.py, log_train_metrics / log_val_metrics). AutoModel's
# training.jsonl buffers its records and loses the last ones when a run dies (an OOM, a kill), so the
# logs of every attempt are read too, and the JSONL's full-precision values win where both have a step.
TRAIN_LINE = re.compile(r"\| step (\d+) \| epoch \d+ \| loss (\S+) \| grad_norm (\S+) \| lr (\S+) \| mem (\S+) GiB"
                        r" \| tps (\S+?)\(")
VAL_LINE = re.compile(r"\[val\] name \"[^\"]*\" \| step (\d+) \| epoch \d+ \| loss (\S+)")


def _from_logs(logs: list[Path]) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    train: dict[int, dict[str, Any]] = {}
    validation: dict[int, dict[str, Any]] = {}
    for log in logs:
        text = log.read_text(errors="replace") if log.is_file() else ""
        for step, loss, grad_norm, lr, mem, tps in TRAIN_LINE.findall(text):
            train[int(step)] = {"step": int(step), "loss": float(loss), "grad_norm": float(grad_norm), "lr": float(lr),
                                "mem": float(mem), "tps": float(tps)}
        for step, loss in VAL_LINE.findall(text):
            validation[int(step)] = {"step": int(step), "val_loss": float(loss)}
    return train, validation


def _jsonl_by_step(path: Path) -> dict[int, dict[str, Any]]:
    """One record per step; a later line wins (a resumed attempt repeats the steps after its checkpoint)."""
    records: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[int(record["step"])] = record
    return records


def attempt_logs(paths: RunPaths) -> list[Path]:
    """Every fine-tune attempt's log (local ``output.log`` or Slurm's ``slurm-<id>.out``), in attempt order."""
    attempts = sorted(paths.finetune_dir.glob("attempt-*"), key=lambda d: int(d.name.removeprefix("attempt-")))
    return [log for d in attempts for log in sorted([*d.glob("output.log"), *d.glob("slurm-*.out")])]


def collect_outputs(paths: RunPaths, log_file: Path, local_batch_size: int, gradient_accumulation: int,
                    wall_time_s: float) -> dict[str, Any]:
    """Copy the adapter out of AutoModel's latest checkpoint and write metrics.jsonl and train_summary.json.

    Steps are reported 1-based, as the hf engine reports them (AutoModel logs the 0-based index).
    """
    layout = AutomodelPaths(paths)
    latest = layout.latest_checkpoint.resolve()
    adapter_source = latest / "model"
    missing = [name for name in ADAPTER_FILES if not (adapter_source / name).is_file()]
    if missing:
        raise RuntimeError(f"AutoModel's latest checkpoint {latest} has no {', '.join(missing)}; see the attempt's"
                           " log")
    paths.adapter_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(adapter_source / name, paths.adapter_dir / name)
    train, validation = _from_logs(attempt_logs(paths))
    train.update(_jsonl_by_step(layout.checkpoint_dir / "training.jsonl"))
    validation.update(_jsonl_by_step(layout.checkpoint_dir / "validation.jsonl"))
    metrics = []
    for index in sorted(train):
        record = train[index]
        row: dict[str, Any] = {"step": index + 1, "loss": record["loss"], "lr": record.get("lr"),
                               "tokens_per_s": record.get("tps"), "grad_norm": record.get("grad_norm")}
        if record.get("mem") is not None:
            row["peak_memory_gib"] = record["mem"]
        if index in validation:
            row["val_loss"] = validation[index].get("val_loss")
        metrics.append(row)
    paths.train_metrics_file.write_text("".join(json.dumps(row) + "\n" for row in metrics))
    peaks = [row["peak_memory_gib"] for row in metrics if row.get("peak_memory_gib")]
    summary = {
        "engine": "automodel",
        "final_step": completed_steps(latest) or (metrics[-1]["step"] if metrics else 0),
        "final_loss": metrics[-1]["loss"] if metrics else math.nan,
        "resumed_from_step": resumed_from(log_file.read_text(errors="replace")),
        "local_batch_size": local_batch_size,
        "gradient_accumulation": gradient_accumulation,
        "checkpoint": str(latest),
        "wall_time_s": round(wall_time_s, 2),
        # AutoModel reports torch.cuda.max_memory_allocated (0 on CPU): unknown there, not zero.
        "peak_memory_gib": max(peaks) if peaks else math.nan,
    }
    paths.train_summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
