"""The hf engine behind the :class:`~peftpipe.engines.Engine` protocol: transformers + peft in our own scripts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftpipe.backends import Backend, LineSink, StageCommand, StopRule
from peftpipe.engines.hf import stages
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.results import TrainResult
from peftpipe.retry import AttemptSettings
from peftpipe.spec import LoadedSpec, RunSpec
from peftpipe.spec_issues import SpecIssue

if TYPE_CHECKING:
    from peftpipe.artifacts_s3 import S3Access


class HfEngine:
    name = "hf"
    methods = ("lora", "ia3", "ptuning")
    stages = stages.STAGES
    memory_model = True  # preflight.py's estimate models transformers + peft
    memory_rungs = ("checkpointing", "offload", "shard", "quantize_base")  # the memory-ladder rungs train.py implements

    def validate(self, loaded: LoadedSpec) -> list[SpecIssue]:
        spec = loaded.spec
        issues: list[SpecIssue] = []
        train = spec.train
        per_step = train.micro_batch_size * train.data_parallel_size
        if train.global_batch_size % per_step:
            issues.append(SpecIssue("train.global_batch_size",
                                    f"{train.global_batch_size} is not divisible by micro_batch_size"
                                    f" {train.micro_batch_size} x data-parallel {train.data_parallel_size}",
                                    f"use a multiple of {per_step}"))
        if "nemo" in spec.model_fields_set:
            issues.append(SpecIssue("nemo", f"applies to engine nemo, not {spec.engine}",
                                    "remove it or set engine: nemo"))
        return issues

    def data_parallel_size(self, spec: RunSpec) -> int:
        return spec.train.data_parallel_size  # every GPU holds a replica

    def job(self, loaded: LoadedSpec, paths: RunPaths, stage: str, settings: AttemptSettings,
            model_path: Path | None) -> StageCommand:
        return stages.stage_command(loaded, paths, stage, settings, model_path)

    def prepare(self, loaded: LoadedSpec, paths: RunPaths, model: FetchedModel, *, on_line: LineSink = print,
                backend: Backend | None = None, access: S3Access | None = None) -> None:
        """Nothing: the hf engine trains the fetched HF checkpoint as it is."""

    def finetune(self, loaded: LoadedSpec, paths: RunPaths, model_path: Path, settings: AttemptSettings, *,
                 on_line: LineSink = print, backend: Backend | None = None, stop_rule: StopRule | None = None,
                 access: S3Access | None = None) -> TrainResult:
        return stages.finetune_stage(loaded, paths, model_path, settings, on_line, backend, stop_rule)

    def evaluate(self, loaded: LoadedSpec, paths: RunPaths, model_path: Path, *, on_line: LineSink = print,
                 backend: Backend | None = None, access: S3Access | None = None) -> dict[str, Any]:
        return stages.evaluate_stage(loaded, paths, model_path, on_line, backend)

    def run_files(self, loaded: LoadedSpec, paths: RunPaths) -> dict[str, Path]:
        return stages.run_files(paths)

    def answer(self, model_path: Path, adapter_dir: Path, records: list[dict[str, Any]], prompt_template: str,
               max_seq_length: int, tokens_to_generate: int, batch_size: int = 8) -> list[str]:
        """``peftpipe generate``: the HF PEFT adapter's greedy answers (an engine without it cannot be tried)."""
        from peftpipe.engines.hf.chat import answer

        return answer(model_path, adapter_dir, records, prompt_template, max_seq_length, tokens_to_generate,
                      batch_size)

    def merge(self, model_path: Path, adapter_dir: Path, out_dir: Path, prompts: list[str], max_shard_size: str,
              tolerance: float | None) -> dict[str, Any]:
        """``peftpipe export --merge``: base + adapter merged into ``out_dir`` after a logits parity check."""
        from peftpipe.engines.hf.merge import MergeParityError, merge_with_parity

        try:
            return merge_with_parity(model_path, adapter_dir, out_dir, prompts, max_shard_size, tolerance)
        except MergeParityError as error:
            from peftpipe.export import ExportError

            raise ExportError(str(error)) from None


ENGINE = HfEngine()
