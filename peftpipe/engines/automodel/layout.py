"""Where the automodel engine's files live in a run directory (on top of :class:`RunPaths`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftpipe.paths import RunPaths


@dataclass(frozen=True)
class AutomodelPaths:
    run: RunPaths

    @property
    def checkpoint_dir(self) -> Path:
        """AutoModel's checkpoint.checkpoint_dir: epoch_E_step_S/ folders, LATEST, training.jsonl."""
        return self.run.finetune_dir / "automodel"

    def data_file(self, split: str) -> Path:
        """The prepared split as AutoModel's dataset reads it: {"prompt", "answer"} per line."""
        return self.run.data_dir / "automodel" / f"{split}.jsonl"

    def config_file(self, attempt: int) -> Path:
        """The rendered YAML of one attempt (attempts differ in local batch size)."""
        return self.run.attempt_dir("finetune", attempt) / "automodel.yaml"

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoint_dir / "LATEST"
