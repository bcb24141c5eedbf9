"""What a person checks on a run's page in the Prefect UI, published as artifacts of the flow run.

Keys are fixed per kind (lowercase letters, digits and dashes, as Prefect requires), so the
global Artifacts page keeps one versioned history of each across runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from peftpipe.paths import RunPaths

SPARK = "▁▂▃▄▅▆▇█"
CHART_ROWS = 12  # the loss table keeps this many evenly spaced steps; the sparkline keeps every step


def sparkline(values: list[float]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[round((v - low) / span * (len(SPARK) - 1))] for v in values)


def loss_chart_markdown(records: list[dict[str, Any]]) -> str:
    """The training loss as a sparkline plus a table of sampled steps with proportional bars."""
    losses = [float(r["loss"]) for r in records]
    step = max(1, len(records) // CHART_ROWS)
    sampled = records[::step]
    if sampled[-1] is not records[-1]:
        sampled.append(records[-1])
    top = max(losses) or 1.0
    rows = [f"| {r['step']} | {float(r['loss']):.4f} | {'█' * max(1, round(float(r['loss']) / top * 30))} |"
            for r in sampled]
    return "\n".join([
        f"**Training loss**, steps {records[0]['step']}–{records[-1]['step']}: "
        f"{losses[0]:.4f} → {losses[-1]:.4f} (min {min(losses):.4f})",
        "", f"`{sparkline(losses)}`", "", "| step | loss | |", "|---:|---:|:---|", *rows,
    ])


def read_train_metrics(paths: RunPaths) -> list[dict[str, Any]]:
    if not paths.train_metrics_file.is_file():
        return []
    lines = paths.train_metrics_file.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def publish_job_scripts(paths: RunPaths) -> list[str]:
    """The rendered batch script of each Slurm job of the run (none for local runs); returns the keys."""
    keys = []
    for stage in ("finetune", "evaluate"):
        scripts = sorted((paths.root / stage).glob("attempt-*/job.sbatch"))
        for script in scripts:
            key = f"{stage}-job-script" if len(scripts) == 1 else f"{stage}-{script.parent.name}-job-script"
            create_markdown_artifact(f"`{script}`\n\n```bash\n{script.read_text()}\n```", key=key,
                                     description=f"The batch script submitted for {stage} ({script.parent.name})")
            keys.append(key)
    return keys


def publish_run_artifacts(paths: RunPaths, metrics: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Metrics table, loss chart and links to the stored objects; returns the keys created."""
    keys = publish_job_scripts(paths)
    scores = [{"metric": k, "value": round(v, 4) if isinstance(v, float) else v}
              for k, v in metrics.items() if isinstance(v, (int, float))]
    create_table_artifact(scores, key="eval-metrics", description="Scores on the test split")
    keys.append("eval-metrics")
    records = read_train_metrics(paths)
    if records:
        create_markdown_artifact(loss_chart_markdown(records), key="training-loss",
                                 description="Training loss per optimizer step (finetune/metrics.jsonl)")
        keys.append("training-loss")
    base = manifest["manifest_url"].rsplit("/", 1)[0]
    links = [f"- [manifest.json]({manifest['manifest_url']}) ({len(manifest['objects'])} objects, sha256 each)"]
    links += [f"- [{o['key']}]({base}/{o['key']}) ({o['size']:,} bytes)" for o in manifest["objects"]]
    create_markdown_artifact(f"**Stored objects of run `{manifest['run_id']}`**\n\n" + "\n".join(links),
                             key="run-artifacts", description="Where the run's outputs are in the artifact store")
    keys.append("run-artifacts")
    return keys
