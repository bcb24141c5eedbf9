"""Every file name of a run, in one place; no other code joins run paths.

A stage's files that belong to one attempt (its config, batch script, job id and logs) live in
that attempt's directory, so a later attempt never rewrites what an earlier one ran with and
every attempt can be replayed from its own directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """``<workdir>/<run_id>/`` and what the stages write under it."""

    root: Path

    @property
    def run_id(self) -> str:
        """The run's id: the name of its directory (``<workdir>/<run_id>``)."""
        return self.root.name

    @property
    def base_model_file(self) -> Path:
        return self.root / "base_model.json"

    @property
    def manifest_file(self) -> Path:
        return self.root / "manifest.json"

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
    def model_layout_file(self) -> Path:
        """The model's layout, written by the fetch stage's model check (``model_fit``)."""
        return self.root / "model_layout.json"

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
    def baseline_predictions_file(self) -> Path:
        """The base model's predictions without the adapter, on the same test records."""
        return self.evaluate_dir / "baseline_predictions.jsonl"

    @property
    def metrics_file(self) -> Path:
        return self.evaluate_dir / "metrics.json"

    def stage_config(self, stage: str, attempt: int = 1) -> Path:
        """The config (hf) or command (nemo) the attempt's program ran with."""
        return self.attempt_dir(stage, attempt) / "config.json"

    def last_attempt(self, stage: str) -> int:
        """The highest attempt number with a directory; 1 before any ran."""
        numbers = [int(d.name.removeprefix("attempt-")) for d in (self.root / stage).glob("attempt-*")
                   if d.name.removeprefix("attempt-").isdigit()]
        return max(numbers, default=1)

    def attempt_dir(self, stage: str, attempt: int = 1) -> Path:
        return self.root / stage / f"attempt-{attempt}"

    def stage_log(self, stage: str, attempt: int = 1) -> Path:
        """A local run's log; a Slurm job's log is ``slurm-<job id>.out`` beside it."""
        return self.attempt_dir(stage, attempt) / "output.log"

    def job_script(self, stage: str, attempt: int = 1) -> Path:
        return self.attempt_dir(stage, attempt) / "job.sbatch"

    def job_id_file(self, stage: str, attempt: int = 1) -> Path:
        return self.attempt_dir(stage, attempt) / "job_id"

    def attempt_files(self, stage_names: tuple[str, ...]) -> dict[str, Path]:
        """Each attempt's log, batch script and config, by key in the artifact store."""
        files: dict[str, Path] = {}
        for stage in stage_names:
            for attempt_dir in sorted((self.root / stage).glob("attempt-*")):
                for log in sorted([*attempt_dir.glob("output.log"), *attempt_dir.glob("slurm-*.out")]):
                    name = attempt_dir.name if log.name == "output.log" else f"{attempt_dir.name}-{log.stem}"
                    files[f"logs/{stage}/{name}.log"] = log
                if (attempt_dir / "job.sbatch").exists():
                    files[f"jobs/{stage}/{attempt_dir.name}.sbatch"] = attempt_dir / "job.sbatch"
                if (attempt_dir / "config.json").exists():
                    files[f"jobs/{stage}/{attempt_dir.name}.config.json"] = attempt_dir / "config.json"
        return files
