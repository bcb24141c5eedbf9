"""One function per pipeline stage. Prefect tasks wrap these; nothing here imports Prefect."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftpipe import __version__
from peftpipe.artifacts import Progress, open_store, publish_directory
from peftpipe.backends import Backend, StageCommand, StageOutcome, StopRule, backend_for
from peftpipe.data.prepare import PreparedData, default_cache_dir, prepare_dataset
from peftpipe.engines.hf import command
from peftpipe.hub.fetch import DEFAULT_TOKEN_HINT, FetchedModel, fetch_model, use_local_model
from peftpipe.metrics import score_predictions
from peftpipe.paths import RunPaths
from peftpipe.spec import LoadedSpec

if TYPE_CHECKING:
    from peftpipe.artifacts_s3 import S3Access

LineSink = Callable[[str], None]


class StageFailed(RuntimeError):
    """A stage's process or job failed; the message has its state, exit code and log tail."""

    def __init__(self, stage: str, outcome: StageOutcome):
        self.stage, self.outcome = stage, outcome
        self.exit_code, self.log_file, self.log_tail = outcome.exit_code, outcome.log_file, outcome.log_tail
        where = f"Slurm job {outcome.job_id} ended {outcome.state}" if outcome.job_id else "process ended"
        early = f"; stopped at once on: {outcome.stopped_early}" if outcome.stopped_early else ""
        super().__init__(f"{stage} failed: {where} with exit code {outcome.exit_code}{early}"
                         f" (log: {outcome.log_file})\n--- log tail ---\n{outcome.log_tail}")


def new_run_id(name: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}"


def run_paths(loaded: LoadedSpec, run_id: str) -> RunPaths:
    return RunPaths(Path(loaded.spec.workdir).expanduser().resolve() / run_id)


def fetch_stage(loaded: LoadedSpec, paths: RunPaths, token: str | None = None,
                token_hint: str = DEFAULT_TOKEN_HINT) -> FetchedModel:
    """Fetch (or reuse) the base model; ``token`` is used by this process only and never written."""
    model = loaded.spec.model
    if model.path is not None:
        fetched = use_local_model(loaded.resolve(model.path))
    else:
        cache = Path(model.cache_dir).expanduser() if model.cache_dir else None
        fetched = fetch_model(model.repo_id, model.revision, cache_dir=cache, endpoint=model.endpoint,
                              token=token, token_hint=token_hint, timeout_s=model.timeout_s)
    paths.root.mkdir(parents=True, exist_ok=True)
    reference = {**asdict(fetched), "path": str(fetched.path)}
    (paths.root / "base_model.json").write_text(json.dumps(reference, indent=2) + "\n")
    return fetched


def prepare_stage(loaded: LoadedSpec, paths: RunPaths) -> PreparedData:
    """Convert the dataset, or reuse the shared cache's copy when inputs and options are unchanged."""
    return prepare_dataset(loaded, paths.data_dir, default_cache_dir(loaded.spec))


@dataclass(frozen=True)
class TrainResult:
    final_step: int
    final_loss: float
    resumed_from_step: int | None
    wall_time_s: float
    peak_memory_gib: float
    micro_batch_size: int
    log_file: str
    job_id: str | None = None
    started_at: float | None = None


def finetune_stage(loaded: LoadedSpec, paths: RunPaths, model_path: Path, micro_batch_size: int | None = None,
                   attempt: int = 1, on_line: LineSink = print, activation_checkpointing: bool | None = None,
                   backend: Backend | None = None, stop_rule: StopRule | None = None, mem: str | None = None,
                   exclude_nodes: tuple[str, ...] = ()) -> TrainResult:
    """Train (or resume training) in ``paths.finetune_dir`` with the hf engine's script."""
    config = command.training_config(loaded.spec, model_path, paths, micro_batch_size, activation_checkpointing)
    config_file = paths.stage_config("finetune")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    train = loaded.spec.train
    stage_command = StageCommand("finetune", attempt, command.training_script_args(config_file),
                                 ranks_per_node=train.devices, gpus_per_node=train.devices, nodes=train.num_nodes,
                                 mem=mem, model_path=model_path, exclude_nodes=exclude_nodes)
    outcome = (backend or backend_for(loaded)).run(loaded, paths, stage_command, on_line, stop_rule)
    if not outcome.succeeded:
        raise StageFailed("finetune", outcome)
    summary = json.loads(paths.train_summary_file.read_text())
    return TrainResult(
        final_step=summary["final_step"],
        final_loss=float("nan") if summary["final_loss"] is None else summary["final_loss"],  # null: none recorded
        resumed_from_step=summary["resumed_from_step"],
        wall_time_s=summary["wall_time_s"],
        peak_memory_gib=summary["peak_memory_gib"],
        micro_batch_size=config["micro_batch_size"],
        log_file=str(outcome.log_file),
        job_id=outcome.job_id,
        started_at=outcome.started_at,
    )


def evaluate_stage(loaded: LoadedSpec, paths: RunPaths, model_path: Path, on_line: LineSink = print,
                   backend: Backend | None = None) -> dict[str, Any]:
    """Generate on the test split (a process or job), then score: exact match (raw and normalised), F1, loss."""
    config_file = paths.stage_config("evaluate")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(command.generation_config(loaded.spec, model_path, paths), indent=2) + "\n")
    stage_command = StageCommand("evaluate", 1, command.generation_script_args(config_file), model_path=model_path)
    outcome = (backend or backend_for(loaded)).run(loaded, paths, stage_command, on_line)
    if not outcome.succeeded:
        raise StageFailed("evaluate", outcome)
    summary = json.loads(paths.eval_summary_file.read_text())
    scores = score_predictions(paths.predictions_file)
    wanted = set(loaded.spec.evaluation.metrics)
    metrics = {k: v for k, v in {**scores, "loss": summary["loss"]}.items() if k in wanted or k == "records"}
    metrics["generation"] = {"tokens_to_generate": summary["tokens_to_generate"], "greedy": summary["greedy"]}
    if outcome.job_id:
        metrics["job_id"] = outcome.job_id
    paths.metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_files(paths: RunPaths) -> dict[str, Path]:
    """What a finished run publishes, by key in the artifact store."""
    files = {f"adapter/{p.name}": p for p in sorted(paths.adapter_dir.iterdir()) if p.is_file()}
    files.update({
        "base_model.json": paths.root / "base_model.json",
        "data/stats.json": paths.data_dir / "stats.json",
        "finetune/metrics.jsonl": paths.train_metrics_file,
        "finetune/train_summary.json": paths.train_summary_file,
        "finetune/config.json": paths.stage_config("finetune"),
        "evaluate/predictions.jsonl": paths.predictions_file,
        "evaluate/metrics.json": paths.metrics_file,
        "evaluate/eval_summary.json": paths.eval_summary_file,
    })
    files.update(attempt_files(paths, ("finetune", "evaluate")))
    return files


def attempt_files(paths: RunPaths, stage_names: tuple[str, ...]) -> dict[str, Path]:
    """Each attempt's log and batch script, by key in the artifact store."""
    files: dict[str, Path] = {}
    for stage in stage_names:
        for attempt_dir in sorted((paths.root / stage).glob("attempt-*")):
            for log in sorted([*attempt_dir.glob("output.log"), *attempt_dir.glob("slurm-*.out")]):
                name = attempt_dir.name if log.name == "output.log" else f"{attempt_dir.name}-{log.stem}"
                files[f"logs/{stage}/{name}.log"] = log
            if (attempt_dir / "job.sbatch").exists():
                files[f"jobs/{stage}/{attempt_dir.name}.sbatch"] = attempt_dir / "job.sbatch"
    return files


def publish_stage(loaded: LoadedSpec, paths: RunPaths, run_id: str, model: FetchedModel, data: PreparedData,
                  metrics: dict[str, Any], access: S3Access | None = None, on_line: LineSink = print,
                  on_progress: Progress | None = None) -> dict[str, Any]:
    """Copy the run's outputs to the artifact store; the manifest goes last.

    Repeating it after a failure sends only what is missing. ``access`` carries the S3
    credentials resolved by the caller (default: the AWS environment).
    """
    artifacts = loaded.spec.artifacts
    store = open_store(artifacts.store, artifacts.s3, access, on_progress)
    metadata = {
        "peftpipe_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": loaded.spec.model_dump(mode="json"),
        "base_model": {"repo_id": model.repo_id, "commit_sha": model.commit_sha, "path": str(model.path)},
        "dataset": {"fingerprint": data.fingerprint, "counts": data.counts, "duplicates_removed": data.duplicates_removed,
                    "skipped": data.skipped, "cache_key": data.cache_key, "reused_from_cache": data.reused},
        "metrics": metrics,
        "host": os.uname().nodename,
    }
    if loaded.spec.engine == "nemo":
        from peftpipe.stages_nemo import nemo_run_files  # imports this module: imported when used

        files = nemo_run_files(loaded, paths)
    else:
        files = run_files(paths)
    published = publish_directory(store, run_id, files, metadata)
    objects = len(published.manifest["objects"])
    on_line(f"{published.transferred} of {objects} objects sent, {objects - published.transferred} already stored")
    (paths.root / "manifest.json").write_text(json.dumps(published.manifest, indent=2) + "\n")
    return published.manifest
