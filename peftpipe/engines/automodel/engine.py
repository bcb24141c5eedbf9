"""The automodel engine behind the :class:`~peftpipe.engines.Engine` protocol: NeMo AutoModel's LLM recipe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftpipe.backends import Backend, LineSink, StageCommand, StopRule
from peftpipe.engines.automodel import stages
from peftpipe.engines.automodel.config import data_parallel_size
from peftpipe.engines.automodel.validate import check_automodel
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.results import TrainResult
from peftpipe.retry import AttemptSettings
from peftpipe.spec import LoadedSpec, RunSpec
from peftpipe.spec_issues import SpecIssue

if TYPE_CHECKING:
    from peftpipe.artifacts_s3 import S3Access


class AutomodelEngine:
    name = "automodel"
    methods = ("lora",)
    stages = stages.STAGES
    memory_model = False  # preflight.py models our transformers + peft script, not AutoModel's recipe
    memory_rungs = ("checkpointing",)  # the only memory-ladder rung it renders

    def validate(self, loaded: LoadedSpec) -> list[SpecIssue]:
        return check_automodel(loaded)

    def data_parallel_size(self, spec: RunSpec) -> int:
        return data_parallel_size(spec)  # ranks / tensor-parallel size

    def job(self, loaded: LoadedSpec, paths: RunPaths, stage: str, settings: AttemptSettings,
            model_path: Path | None) -> StageCommand:
        return stages.stage_command(loaded, paths, stage, settings, model_path)

    def prepare(self, loaded: LoadedSpec, paths: RunPaths, model: FetchedModel, *, on_line: LineSink = print,
                backend: Backend | None = None, access: S3Access | None = None) -> None:
        """Nothing: AutoModel loads the fetched HF checkpoint itself."""

    def finetune(self, loaded: LoadedSpec, paths: RunPaths, model_path: Path, settings: AttemptSettings, *,
                 on_line: LineSink = print, backend: Backend | None = None, stop_rule: StopRule | None = None,
                 access: S3Access | None = None) -> TrainResult:
        return stages.finetune_stage(loaded, paths, model_path, settings, on_line, backend, stop_rule)

    def evaluate(self, loaded: LoadedSpec, paths: RunPaths, model_path: Path, *, on_line: LineSink = print,
                 backend: Backend | None = None, access: S3Access | None = None) -> dict[str, Any]:
        """The pipeline's own evaluation of AutoModel's adapter (a standard PEFT adapter folder): the hf
        engine's generation and scores, reached through the registry."""
        return stages.evaluating_engine().evaluate(loaded, paths, model_path, on_line=on_line, backend=backend,
                                                   access=access)

    def run_files(self, loaded: LoadedSpec, paths: RunPaths) -> dict[str, Path]:
        return stages.run_files(loaded, paths)

    def merge(self, model_path: Path, adapter_dir: Path, out_dir: Path, prompts: list[str], max_shard_size: str,
              tolerance: float | None) -> dict[str, Any]:
        """``peftpipe export --merge``: AutoModel's adapter is a standard PEFT folder, merged as the hf engine does."""
        return stages.evaluating_engine().merge(model_path, adapter_dir, out_dir, prompts, max_shard_size,  # type: ignore[attr-defined]
                                                tolerance)


ENGINE = AutomodelEngine()
