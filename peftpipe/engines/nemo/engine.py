"""The nemo engine behind the :class:`~peftpipe.engines.Engine` protocol: NeMo 1.x scripts in Slurm jobs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftpipe.backends import Backend, LineSink, StageCommand, StopRule
from peftpipe.engines.nemo import stages
from peftpipe.engines.nemo.resources import data_parallel_size
from peftpipe.engines.nemo.validate import check_nemo
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.results import TrainResult
from peftpipe.retry import AttemptSettings
from peftpipe.spec import LoadedSpec, RunSpec
from peftpipe.spec_issues import SpecIssue

if TYPE_CHECKING:
    from peftpipe.artifacts_s3 import S3Access


class NemoEngine:
    name = "nemo"
    # check_nemo narrows these to what the spec's container profile runs.
    methods = ("lora", "ptuning", "adapter", "ia3")
    stages = stages.STAGES
    memory_model = False  # preflight.py models transformers + peft, not Megatron
    memory_rungs = ("checkpointing",)  # the only memory-ladder rung it renders

    def validate(self, loaded: LoadedSpec) -> list[SpecIssue]:
        return check_nemo(loaded)

    def data_parallel_size(self, spec: RunSpec) -> int:
        return data_parallel_size(spec)  # GPUs / (TP x PP)

    def job(self, loaded: LoadedSpec, paths: RunPaths, stage: str, settings: AttemptSettings,
            model_path: Path | None) -> StageCommand:
        return stages.stage_command(loaded, paths, stage, settings, model_path)

    def prepare(self, loaded: LoadedSpec, paths: RunPaths, model: FetchedModel, *, on_line: LineSink = print,
                backend: Backend | None = None, access: S3Access | None = None) -> None:
        """The base .nemo: ``nemo.nemo_path``, the store's verified copy, or a convert job."""
        base = stages.convert_stage(loaded, paths, model, on_line=on_line, backend=backend, access=access)
        on_line(f"base .nemo {base.path} ({base.source}, sha256 {base.sha256 or '-'})")

    def finetune(self, loaded: LoadedSpec, paths: RunPaths, model_path: Path, settings: AttemptSettings, *,
                 on_line: LineSink = print, backend: Backend | None = None, stop_rule: StopRule | None = None,
                 access: S3Access | None = None) -> TrainResult:
        return stages.nemo_finetune_stage(loaded, paths, settings, on_line, backend, stop_rule, access)

    def evaluate(self, loaded: LoadedSpec, paths: RunPaths, model_path: Path, *, on_line: LineSink = print,
                 backend: Backend | None = None, access: S3Access | None = None) -> dict[str, Any]:
        return stages.nemo_evaluate_stage(loaded, paths, on_line, backend, access)

    def run_files(self, loaded: LoadedSpec, paths: RunPaths) -> dict[str, Path]:
        return stages.nemo_run_files(loaded, paths)


ENGINE = NemoEngine()
