"""What ``peftpipe run`` prints when the flow ends: one row per stage and attempt, the result, how to resume.

Each attempt row shows that attempt's own outcome, last step and loss (the flow's summary
carries one record per attempt); the run's result (metrics, where the adapter is) comes last,
where a person looks first.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ATTEMPT_TASK = re.compile(r"^finetune-attempt(\d+)-")
METRIC_ORDER = ("exact_match", "exact_match_normalized", "f1", "loss")


def resume_command(spec: Path, run_id: str, set_pairs: list[str] | None) -> str:
    """The exact command that resumes this run from its latest checkpoint."""
    argv = ["peftpipe", "run", str(spec), "--run-id", run_id]
    for pair in set_pairs or []:
        argv += ["--set", pair]
    return shlex.join(argv)


def attempt_figures(attempt: dict[str, Any]) -> str:
    """``failed (gpu_oom) at step 3, loss 6.9012; mbs 4 x accumulation 2``: this attempt's, not the run's."""
    outcome = attempt["outcome"] if attempt["outcome"] == "completed" else f"{attempt['outcome']} ({attempt['kind']})"
    if attempt.get("last_step") is None:
        progress = "before its first step"
    else:
        loss = attempt.get("last_loss")
        progress = f"step {attempt['last_step']}" + (f", loss {loss:.4f}" if loss is not None else "")
        progress = ("at " if attempt["outcome"] != "completed" else "") + progress
    job = f", job {attempt['job_id']}" if attempt.get("job_id") else ""
    return (f"{outcome} {progress}; mbs {attempt['micro_batch_size']} x accumulation "
            f"{attempt['gradient_accumulation']}{job}")


def key_figures(task_name: str, summary: dict[str, Any]) -> str:
    if not summary:
        return ""
    attempt = ATTEMPT_TASK.match(task_name)
    if attempt:
        number = int(attempt.group(1))
        rows = [row for row in summary.get("attempts", []) if row["attempt"] == number]
        if rows:
            figures = attempt_figures(rows[0])
            resumed = summary["train"]["resumed_from_step"]
            if rows[0]["outcome"] == "completed" and resumed:
                figures += f", resumed from {resumed}"
            return figures
        return ""
    if task_name == "fetch-model":
        model = summary["model"]
        return f"{model['repo_id'] or 'local'} @ {(model['commit_sha'] or '-')[:12]}"
    if task_name == "prepare-data":
        counts = summary["data"]["counts"]
        return " / ".join(f"{k} {v}" for k, v in counts.items())
    if task_name == "evaluate":
        return metrics_text(summary["metrics"])
    if task_name == "publish":
        return f"{summary['objects']} objects + manifest"
    return ""


def metrics_text(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_ORDER if isinstance(metrics.get(k), (int, float)))


def print_summary(console: Console, title: str, rows: list[Any], summary: dict[str, Any]) -> None:
    """The stage table, then the result lines (metrics, adapter, run directory, manifest)."""
    table = Table(title=title)
    for column in ("stage", "status", "duration", "key figures"):
        table.add_column(column)
    for row in rows:
        duration = f"{row.duration_s:.1f} s" if row.duration_s is not None else "-"
        table.add_row(row.name, row.state, duration, key_figures(row.name, summary))
    console.print(table)
    console.print(f"run directory: {summary.get('run_dir', '-')}")
    console.print(f"manifest: {summary.get('manifest_url', '-')}")
    if summary.get("metrics"):
        console.print(f"[bold]metrics (test split):[/] {metrics_text(summary['metrics'])}", highlight=False)
    if summary.get("adapter_url"):
        console.print(f"[bold]adapter:[/] {summary['adapter_url']}", highlight=False, soft_wrap=True)
