"""Training curves and step progress on the run's page in the Prefect UI, updated while training runs.

A watcher thread reads ``finetune/metrics.jsonl`` (written by the training script locally or in a
Slurm job, on the shared file system) every few seconds, across all attempts: it moves a
progress artifact to the latest step, and every ``every_steps`` steps redraws the chart
(:mod:`peftpipe.charts`) into ``finetune/training_chart.png`` and into one markdown artifact
that embeds it. Both artifacts are created once, in the flow, and then updated in place, so the
page shows one card of each, never one per update. The spec's experiment loggers
(:mod:`peftpipe.experiment_loggers`) are fed from the same reads.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from peftpipe.charts import CHART_FILE, render_training_chart
from peftpipe.experiment_loggers import MetricsFollower
from peftpipe.paths import RunPaths
from peftpipe.train_metrics import read_records

CHART_KEY = "training-chart"
PROGRESS_KEY = "training-progress"
POLL_S = 2.0


def chart_markdown(png: Path, records: list[dict[str, Any]], max_steps: int) -> str:
    """The chart as an inline image (the UI cannot reach the run directory), with the latest figures."""
    encoded = base64.b64encode(png.read_bytes()).decode()
    last = records[-1]
    validated = [r for r in records if r.get("val_loss") is not None]
    val = f", validation loss {float(validated[-1]['val_loss']):.4f} (step {validated[-1]['step']})" if validated else ""
    return (f"**Training curves**: step {last['step']} of {max_steps}, loss {float(last['loss']):.4f}{val},"
            f" learning rate {float(last['lr']):.3g}\n\n![training and validation loss, learning rate]"
            f"(data:image/png;base64,{encoded})\n\n`{png}`")


class LiveTrainingChart:
    """Use as a context manager around the attempts; the last redraw happens on exit."""

    def __init__(self, paths: RunPaths, max_steps: int, title: str, every_steps: int = 5,
                 loggers: MetricsFollower | None = None):
        self.paths, self.max_steps, self.title, self.every_steps = paths, max_steps, title, max(1, every_steps)
        self.loggers = loggers  # the spec's experiment loggers, fed from the same records
        self.png = paths.finetune_dir / CHART_FILE
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress_id: UUID | None = None
        self._chart_id: UUID | None = None
        self._drawn_step = -1
        self._progress_step = -1

    def __enter__(self) -> LiveTrainingChart:
        # Created here, in the flow's context, so both belong to this flow run; the thread only updates.
        self._progress_id = create_progress_artifact(0.0, key=PROGRESS_KEY,
                                                     description=f"Optimizer steps done of {self.max_steps}")
        self._chart_id = create_markdown_artifact(
            "**Training curves**: waiting for the first step", key=CHART_KEY,
            description=f"Training and validation loss, learning rate; redrawn every {self.every_steps} steps")
        self._thread = threading.Thread(target=self._watch, name="training-chart", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        try:
            self.update(final=True)
        finally:
            if self.loggers is not None:
                self.loggers.close(succeeded=exc_type is None)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.update()
            except Exception as error:  # noqa: BLE001 - a chart must never stop training; the next poll retries
                print(f"training chart not updated: {error}")

    def update(self, final: bool = False) -> None:
        records = read_records(self.paths.train_metrics_file)
        if self.loggers is not None:
            self.loggers.feed(records)  # never raises: a failing logger is reported and left out
        if not records:
            return
        step = int(records[-1]["step"])
        with get_client(sync_client=True) as client:
            if step != self._progress_step and self._progress_id is not None:
                client.update_artifact(self._progress_id,
                                       ArtifactUpdate(data=round(100.0 * min(step, self.max_steps) / self.max_steps, 1)))
                self._progress_step = step
            due = step // self.every_steps != self._drawn_step // self.every_steps or step >= self.max_steps
            if self._chart_id is not None and step != self._drawn_step and (due or final):
                render_training_chart(records, self.png, self.title, self.max_steps)
                client.update_artifact(self._chart_id,
                                       ArtifactUpdate(data=chart_markdown(self.png, records, self.max_steps)))
                self._drawn_step = step
