"""Where the nemo engine's stages read and write inside a run directory.

Every NeMo path the renderers use comes from here, so that evaluation reads exactly the
adapter that training writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec

TEST_NAME = "test"


def experiment_name(scheme: str) -> str:
    """NeMo's own default ``name`` (megatron_gpt_finetuning_config.yaml l.1), set explicitly."""
    return f"megatron_gpt_peft_{scheme}_tuning"


@dataclass(frozen=True)
class NemoPaths:
    run: RunPaths

    @property
    def convert_dir(self) -> Path:
        return self.run.root / "convert"

    @property
    def converted_nemo(self) -> Path:
        return self.convert_dir / "base.nemo"

    @property
    def log_dir(self) -> Path:
        """``exp_manager.explicit_log_dir``: the same for every attempt, so a retry resumes from ``-last``."""
        return self.run.finetune_dir / "nemo"

    @property
    def checkpoints_dir(self) -> Path:
        return self.log_dir / "checkpoints"

    def adapter_nemo(self, scheme: str) -> Path:
        """The adapter-only .nemo that ``save_nemo_on_train_end`` writes (the best checkpoint's weights)."""
        return self.checkpoints_dir / f"{experiment_name(scheme)}.nemo"

    @property
    def train_index_dir(self) -> Path:
        """JSONL index files; NeMo writes them next to the data otherwise, which may be read-only."""
        return self.run.finetune_dir / "index_mapping"

    @property
    def test_index_dir(self) -> Path:
        return self.run.evaluate_dir / "index_mapping"

    @property
    def predictions_prefix(self) -> Path:
        return self.run.evaluate_dir / "nemo"

    def nemo_predictions(self, name: str = TEST_NAME) -> Path:
        """``f"{output_file_path_prefix}_test_{name}_inputs_preds_labels.jsonl"`` (megatron_gpt_sft_model.py
        l.564-566, l.694 at 2874086783)."""
        return Path(f"{self.predictions_prefix}_test_{name}_inputs_preds_labels.jsonl")


def base_nemo(loaded: LoadedSpec, paths: NemoPaths) -> Path:
    """The base model .nemo fine-tuning restores: ``nemo.nemo_path`` or the convert stage's output."""
    nemo_path = loaded.spec.nemo.nemo_path
    return loaded.resolve(nemo_path) if nemo_path else paths.converted_nemo
