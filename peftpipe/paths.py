"""Every file name of a run, in one place; no other code joins run paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """``<workdir>/<run_id>/`` and what the stages write under it."""

    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def data_file(self, split: str) -> Path:
        return self.data_dir / f"{split}.jsonl"

    @property
    def finetune_dir(self) -> Path:
        return self.root / "finetune"

    @property
    def adapter_dir(self) -> Path:
        return self.finetune_dir / "adapter"

    @property
    def train_metrics_file(self) -> Path:
        return self.finetune_dir / "metrics.jsonl"

    @property
    def train_summary_file(self) -> Path:
        return self.finetune_dir / "train_summary.json"

    @property
    def evaluate_dir(self) -> Path:
        return self.root / "evaluate"

    @property
    def predictions_file(self) -> Path:
        return self.evaluate_dir / "predictions.jsonl"

    @property
    def eval_summary_file(self) -> Path:
        return self.evaluate_dir / "eval_summary.json"

    @property
    def metrics_file(self) -> Path:
        return self.evaluate_dir / "metrics.json"

    def stage_config(self, stage: str) -> Path:
        return self.root / stage / "config.json"

    def attempt_dir(self, stage: str, attempt: int = 1) -> Path:
        return self.root / stage / f"attempt-{attempt}"

    def stage_log(self, stage: str, attempt: int = 1) -> Path:
        """A local run's log; a Slurm job's log is ``slurm-<job id>.out`` beside it."""
        return self.attempt_dir(stage, attempt) / "output.log"

    def job_script(self, stage: str, attempt: int = 1) -> Path:
        return self.attempt_dir(stage, attempt) / "job.sbatch"

    def job_id_file(self, stage: str, attempt: int = 1) -> Path:
        return self.attempt_dir(stage, attempt) / "job_id"
