"""The hf engine's stages: the job of each stage, one fine-tune attempt, evaluation, and what a run publishes.

Pure of Prefect and of torch: the stages run ``train.py`` and ``generate.py`` (this folder) as a
process group or a Slurm job through a backend, then read back the files those scripts wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from peftpipe.charts import CHART_FILE
from peftpipe.backends import Backend, LineSink, StageCommand, StopRule, backend_for
from peftpipe.engines.hf import command
from peftpipe.evaluation import scores, with_baseline
from peftpipe.paths import RunPaths
from peftpipe.results import StageFailed, TrainResult
from peftpipe.retry import AttemptSettings, spec_settings
from peftpipe.slurm.jobs import SOURCE_ROOT, stage_job
from peftpipe.spec import LoadedSpec
from peftpipe.spec_issues import SpecError

STAGES = ("finetune", "evaluate")


def stage_command(loaded: LoadedSpec, paths: RunPaths, stage: str, settings: AttemptSettings,
                  model_path: Path | None) -> StageCommand:
    """The one builder of an hf stage's job: ``peftpipe render`` prints it, the backends run it."""
    if stage not in STAGES:
        raise SpecError.single("--stage", f"engine hf trains the HF checkpoint directly and has no {stage} stage",
                               "render finetune or evaluate")
    if model_path is None:
        raise ValueError("model: a Hub model's directory is known only after fetch-model. Fix: pass --model-path"
                         " with the fetched snapshot directory, or set model.path")
    spec, attempt = loaded.spec, settings.attempt
    config_file = paths.stage_config(stage, attempt)
    if stage == "finetune":
        config = command.training_config(spec, model_path, paths, settings.micro_batch_size,
                                         settings.activation_checkpointing, settings.offload_activations,
                                         settings.shard, settings.quantize_base)
        script_args = command.training_script_args(config_file)
        gpus, nodes, mem = spec.train.devices, spec.train.num_nodes, settings.mem
    else:
        config = command.generation_config(spec, model_path, paths)
        script_args = command.generation_script_args(config_file)
        gpus, nodes, mem = 1, 1, None  # the hf generation script is one process
    job = stage_job(spec, paths.run_id, paths, stage, attempt, script_args, host_python=sys.executable,
                    gpus_per_node=gpus, nodes=nodes, mem=mem, model_path=model_path, code_root=SOURCE_ROOT,
                    exclude=settings.exclude_nodes)
    return StageCommand(stage, attempt, script_args, ranks_per_node=gpus, gpus_per_node=gpus, nodes=nodes, mem=mem,
                        model_path=model_path, job=job,
                        files={config_file: json.dumps(config, indent=2) + "\n"},
                        described={"engine": "hf", "stage": stage, "script_args": script_args, "config": config})


def finetune_stage(loaded: LoadedSpec, paths: RunPaths, model_path: Path, settings: AttemptSettings,
                   on_line: LineSink = print, backend: Backend | None = None, stop_rule: StopRule | None = None
                   ) -> TrainResult:
    """Train (or resume training) in ``paths.finetune_dir`` with the hf engine's script."""
    stage = stage_command(loaded, paths, "finetune", settings, model_path)
    outcome = (backend or backend_for(loaded)).run(loaded, paths, stage, on_line, stop_rule)
    if not outcome.succeeded:
        raise StageFailed("finetune", outcome)
    summary = json.loads(paths.train_summary_file.read_text())
    return TrainResult.from_summary(summary, settings.micro_batch_size, outcome)


def evaluate_stage(loaded: LoadedSpec, paths: RunPaths, model_path: Path, on_line: LineSink = print,
                   backend: Backend | None = None) -> dict[str, Any]:
    """Generate on the test split (a process or job), then score: exact match (raw and normalised), F1, loss,
    accuracy and macro-F1 for label tasks; with the base model's scores and the delta when it ran too."""
    stage = stage_command(loaded, paths, "evaluate", spec_settings(loaded.spec), model_path)
    outcome = (backend or backend_for(loaded)).run(loaded, paths, stage, on_line)
    if not outcome.succeeded:
        raise StageFailed("evaluate", outcome)
    summary = json.loads(paths.eval_summary_file.read_text())
    metrics = scores(loaded.spec, paths.predictions_file, summary["loss"])
    if "baseline_loss" in summary:
        baseline = scores(loaded.spec, paths.baseline_predictions_file, summary["baseline_loss"])
        metrics = with_baseline(metrics, baseline)
        metrics["predictions_changed_by_adapter"] = summary["predictions_changed_by_adapter"]
    metrics["generation"] = {"tokens_to_generate": summary["tokens_to_generate"], "greedy": summary["greedy"]}
    if outcome.job_id:
        metrics["job_id"] = outcome.job_id
    paths.metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_files(paths: RunPaths) -> dict[str, Path]:
    """What a finished run publishes, by key in the artifact store."""
    files = {f"adapter/{p.name}": p for p in sorted(paths.adapter_dir.iterdir()) if p.is_file()}
    files.update({
        "base_model.json": paths.base_model_file,
        "data/stats.json": paths.data_dir / "stats.json",
        "finetune/metrics.jsonl": paths.train_metrics_file,
        "finetune/train_summary.json": paths.train_summary_file,
        # The completed attempt's config; every attempt's own is under jobs/.
        "finetune/config.json": paths.stage_config("finetune", paths.last_attempt("finetune")),
        "evaluate/predictions.jsonl": paths.predictions_file,
        **({"evaluate/baseline_predictions.jsonl": paths.baseline_predictions_file}
           if paths.baseline_predictions_file.is_file() else {}),
        "evaluate/metrics.json": paths.metrics_file,
        "evaluate/eval_summary.json": paths.eval_summary_file,
    })
    if paths.model_layout_file.is_file():  # written by the fetch stage's model check
        files[paths.model_layout_file.name] = paths.model_layout_file
    files.update(paths.attempt_files(("finetune", "evaluate")))
    chart = paths.finetune_dir / CHART_FILE  # drawn by the flow while training ran
    if chart.is_file():
        files[f"finetune/{CHART_FILE}"] = chart
    return files
