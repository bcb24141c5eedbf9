"""The nemo engine's stages: convert, fine-tune (one attempt), evaluate, and what a run publishes.

Each stage's job comes from :func:`stage_command` (the NeMo command of
:mod:`peftpipe.engines.nemo.jobs` wrapped into its Slurm job), which ``peftpipe render`` prints
too; it runs through the same backend as the hf engine, then the stage reads back what NeMo
wrote. Nothing here imports Prefect.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftpipe import __version__
from peftpipe.artifacts import ArtifactStore, ChecksumMismatch, publish_directory, restore
from peftpipe.stores import open_store
from peftpipe.backends import Backend, LineSink, StageCommand, StageOutcome, StopRule, backend_for
from peftpipe.engines.nemo import jobs
from peftpipe.engines.nemo.checkpoints import STEP_PATTERN, clear_stale_checkpoints, last_checkpoint_step
from peftpipe.engines.nemo.convert import read_hf_config
from peftpipe.engines.nemo.generate import evaluation_metrics
from peftpipe.engines.nemo.layout import NemoPaths, base_nemo
from peftpipe.hub.fetch import FetchedModel
from peftpipe.paths import RunPaths
from peftpipe.results import StageFailed, TrainResult
from peftpipe.retry import AttemptSettings
from peftpipe.spec import LoadedSpec
from peftpipe.spec_issues import SpecError

if TYPE_CHECKING:
    from peftpipe.artifacts_s3 import S3Access

STAGES = jobs.STAGES
BASE_NEMO_KEY = "base.nemo"
BASE_STORE_PREFIX = "nemo-base-"  # store "runs" holding one converted base .nemo each
# Files up to this size are identified by content; larger ones (weights) by size and mtime, so
# that a local model is not read in full for a cache key. A copied or rewritten file gets a new
# mtime: the worst case is a needless conversion, never a stale .nemo.
HASHED_FILE_LIMIT = 16 << 20


@dataclass(frozen=True)
class BaseNemo:
    """The base model .nemo fine-tuning restores, and where it came from."""

    path: Path
    source: str  # "nemo_path" (given in the spec), "store" (restored, sha256 verified) or "converted"
    sha256: str | None = None
    size: int | None = None
    store_run: str | None = None  # the store entry holding it (``nemo-base-<key>``)
    store_url: str | None = None
    job_id: str | None = None
    cache_inputs: dict[str, Any] | None = None

    def reference(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def _nemo_paths(paths: RunPaths) -> NemoPaths:
    nemo_paths = NemoPaths(paths)
    nemo_paths.convert_dir.mkdir(parents=True, exist_ok=True)
    return nemo_paths


def _model_identity(model: FetchedModel) -> dict[str, Any]:
    """What pins the HF checkpoint's content: the Hub commit, or (a local model) its files."""
    if model.commit_sha:
        return {"repo_id": model.repo_id, "commit_sha": model.commit_sha, "files": sorted(model.files)}
    files: dict[str, Any] = {}
    for name in sorted(model.files):
        stat = (model.path / name).stat()
        if stat.st_size <= HASHED_FILE_LIMIT:
            files[name] = hashlib.sha256((model.path / name).read_bytes()).hexdigest()
        else:
            files[name] = f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}"
    return {"path": str(model.path), "files": files}


def conversion_inputs(loaded: LoadedSpec, model: FetchedModel, command: jobs.NemoCommand, output: Path
                      ) -> dict[str, Any]:
    """Everything that decides the converted .nemo's bytes: model, converter, its flags, container, node.

    The input and output paths are left out: they differ between runs, the bytes do not.
    """
    paths_in_argv = (str(model.path), str(output))
    flags = [arg for arg in command.argv or [] if not any(path in arg for path in paths_in_argv)]
    return {"model": _model_identity(model), "profile": command.profile, "converter": Path(command.script).name,
            "flags": flags,
            # A CPU node writes fp16 where a GPU node writes bf16 (precision_caveat), so the node kind counts.
            "convert_gpus": loaded.spec.nemo.convert.gpus}


def base_store_run(inputs: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return f"{BASE_STORE_PREFIX}{digest[:24]}"


def _stored_object(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(o for o in manifest["objects"] if o["key"] == BASE_NEMO_KEY)


def _restore_base(store: ArtifactStore, store_run: str, target: Path, on_line: LineSink) -> dict[str, Any] | None:
    """The stored object's manifest entry once ``target`` holds it verified; None when it must be converted."""
    manifest = store.read_manifest(store_run)
    if manifest is None or not any(o["key"] == BASE_NEMO_KEY for o in manifest["objects"]):
        return None
    try:
        restore(store, store_run, BASE_NEMO_KEY, target)
    except ChecksumMismatch as error:
        on_line(f"converted .nemo in the store is damaged, converting again: {error}")
        return None
    return _stored_object(manifest)


def convert_stage(loaded: LoadedSpec, paths: RunPaths, model: FetchedModel, on_line: LineSink = print,
                  backend: Backend | None = None, access: S3Access | None = None) -> BaseNemo:
    """The base .nemo for fine-tuning: ``nemo.nemo_path``, else the store's verified copy, else a convert job.

    A conversion's result goes to the artifact store under a key derived from the model's
    content, the converter, its flags (precision) and the container profile, so that a later
    run of the same model skips the job.
    """
    spec = loaded.spec
    nemo_paths = _nemo_paths(paths)
    if spec.nemo.nemo_path:
        base = BaseNemo(base_nemo(loaded, nemo_paths), "nemo_path")
        return _record(paths, base, on_line, f"using nemo.nemo_path {base.path}; no conversion")
    hf_config = read_hf_config(model.path)
    command = jobs.convert_command(loaded, nemo_paths, model.path, hf_config)
    target = nemo_paths.converted_nemo
    inputs = conversion_inputs(loaded, model, command, target)
    store_run = base_store_run(inputs)
    artifacts = spec.artifacts
    store = open_store(artifacts.store, artifacts.s3, access)
    stored = _restore_base(store, store_run, target, on_line)
    if stored is not None:
        base = BaseNemo(target, "store", stored["sha256"], stored["size"], store_run,
                        store.url(store_run, BASE_NEMO_KEY), cache_inputs=inputs)
        return _record(paths, base, on_line, f"converted .nemo restored from {base.store_url} (sha256 verified);"
                                             " no convert job")
    for note in command.notes:
        on_line(f"note: {note}")
    stage = _stage_command(loaded, paths, command, AttemptSettings(1, spec.train.micro_batch_size),
                           model_dir=model.path, hf_config=hf_config)
    outcome = _run(loaded, paths, stage, backend, on_line)
    if not target.is_file():
        raise RuntimeError(f"the convert job {outcome.job_id} completed but wrote no {target}; see {outcome.log_file}")
    metadata = {"kind": "nemo-base", "peftpipe_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "base_model": {"repo_id": model.repo_id, "commit_sha": model.commit_sha, "path": str(model.path)},
                "conversion": inputs, "converted_in": {"run": paths.run_id, "job_id": outcome.job_id}}
    published = publish_directory(store, store_run, {BASE_NEMO_KEY: target}, metadata)
    stored = _stored_object(published.manifest)
    base = BaseNemo(target, "converted", stored["sha256"], stored["size"], store_run,
                    store.url(store_run, BASE_NEMO_KEY), outcome.job_id, inputs)
    return _record(paths, base, on_line, f"converted .nemo stored at {base.store_url}")


def base_reference_file(paths: RunPaths) -> Path:
    return paths.root / "base_nemo.json"


def _record(paths: RunPaths, base: BaseNemo, on_line: LineSink, message: str) -> BaseNemo:
    base_reference_file(paths).write_text(json.dumps(base.reference(), indent=2) + "\n")
    on_line(message)
    return base


def stage_command(loaded: LoadedSpec, paths: RunPaths, stage: str, settings: AttemptSettings,
                  model_path: Path | None) -> StageCommand:
    """The one builder of a nemo stage's job: ``peftpipe render`` prints it, the Slurm backend submits it."""
    nemo_paths = NemoPaths(paths)
    if stage == "convert":
        if loaded.spec.nemo.nemo_path:
            raise SpecError.single("nemo.nemo_path", "names an existing .nemo, so there is no convert stage",
                                   "render --stage finetune, or remove nemo.nemo_path")
        if model_path is None:
            raise ValueError("model: a Hub model's directory is known only after fetch-model. Fix: pass --model-path"
                             " with the fetched snapshot directory, or set model.path")
        hf_config = read_hf_config(model_path)
        command = jobs.convert_command(loaded, nemo_paths, model_path, hf_config)
        return _stage_command(loaded, paths, command, settings, model_dir=model_path, hf_config=hf_config)
    if stage == "finetune":
        command = jobs.finetune_command(loaded, nemo_paths, micro_batch_size=settings.micro_batch_size,
                                        activation_checkpointing=settings.activation_checkpointing)
    elif stage == "evaluate":
        command = jobs.generate_command(loaded, nemo_paths)
    else:
        raise SpecError.single("--stage", f"engine nemo has no {stage} stage", f"render one of {', '.join(STAGES)}")
    return _stage_command(loaded, paths, command, settings)


def _stage_command(loaded: LoadedSpec, paths: RunPaths, command: jobs.NemoCommand, settings: AttemptSettings, *,
                   model_dir: Path | None = None, hf_config: dict[str, Any] | None = None) -> StageCommand:
    """The NeMo command as a Slurm job, with the command itself as the attempt's config file."""
    stage = command.stage if command.stage != "generate" else "evaluate"
    # Only a fine-tune attempt's host memory is raised by the retry policy.
    mem = settings.mem if stage == "finetune" else None
    job = jobs.job_request(loaded, paths.run_id, paths, command, settings.attempt, host_python=sys.executable,
                           model_dir=model_dir, hf_config=hf_config, mem=mem,
                           exclude=settings.exclude_nodes if stage == "finetune" else ())
    described = command.as_json()
    return StageCommand(stage, settings.attempt, command.script_args, job=job,
                        files={paths.stage_config(stage, settings.attempt): json.dumps(described, indent=2) + "\n"},
                        described=described)


def _run(loaded: LoadedSpec, paths: RunPaths, command: StageCommand, backend: Backend | None, on_line: LineSink,
         stop_rule: StopRule | None = None) -> StageOutcome:
    outcome = (backend or backend_for(loaded)).run(loaded, paths, command, on_line, stop_rule)
    if not outcome.succeeded:
        raise StageFailed(command.stage, outcome)
    return outcome


# NeMo's progress bar: "... reduced_train_loss=1.23, global_step=41.0, consumed_samples=..." (its
# postfix of logged metrics); exp_manager: "Resuming training from checkpoint: <path with step=N>".
_LOSS = re.compile(r"reduced_train_loss=([-+0-9.eE]+|nan)")
_RESUMED = re.compile(r"Resuming training from checkpoint: (.*)")


@dataclass(frozen=True)
class TrainLog:
    final_loss: float
    resumed_from_step: int | None


def read_train_log(text: str) -> TrainLog:
    losses = _LOSS.findall(text)
    # Resuming happens once, at start-up, before the first training step is logged; a rank that
    # starts late finds the checkpoint the others just wrote and logs it after training: ignore.
    first_step = _LOSS.search(text)
    before_training = text[:first_step.start()] if first_step else text
    resumed = _RESUMED.findall(before_training)
    step = STEP_PATTERN.search(resumed[0]) if resumed else None
    # NaN: this attempt logged no training step (it resumed at max_steps), so it saw no loss.
    return TrainLog(float(losses[-1]) if losses else math.nan, int(step.group(1)) if step else None)


def nemo_finetune_stage(loaded: LoadedSpec, paths: RunPaths, settings: AttemptSettings, on_line: LineSink = print,
                        backend: Backend | None = None, stop_rule: StopRule | None = None,
                        access: S3Access | None = None) -> TrainResult:
    """One attempt of ``megatron_gpt_finetuning.py``; it resumes from the run's ``-last`` checkpoint.

    Stale ``-last`` checkpoints a killed job left are removed first: NeMo refuses to resume
    when it finds more than one.
    """
    spec = loaded.spec
    nemo_paths = NemoPaths(paths)
    plan = clear_stale_checkpoints(nemo_paths.checkpoints_dir)
    for reason in plan.reasons:
        on_line(f"removed a stale checkpoint before attempt {settings.attempt}: {reason}")
    outcome = _run(loaded, paths, stage_command(loaded, paths, "finetune", settings, None), backend, on_line,
                   stop_rule)
    adapter = nemo_paths.adapter_nemo(spec.peft.method)
    if not adapter.is_file():
        raise RuntimeError(f"fine-tune job {outcome.job_id} completed without writing the adapter {adapter}"
                           f" (NeMo's save_nemo_on_train_end); see {outcome.log_file}")
    store_adapter(loaded, paths, access, on_line)
    log = read_train_log(outcome.log_file.read_text(errors="replace"))
    final_step = last_checkpoint_step(nemo_paths.checkpoints_dir)
    return TrainResult(
        final_step=final_step if final_step is not None else spec.train.max_steps,
        final_loss=log.final_loss,
        resumed_from_step=log.resumed_from_step,
        # From submission to the end the watcher saw: queue wait included, as NeMo logs no
        # training wall time of its own in a form worth parsing.
        wall_time_s=round(time.time() - outcome.started_at, 1) if outcome.started_at else math.nan,
        # NeMo 1.x does not log peak GPU memory; unknown rather than guessed.
        peak_memory_gib=math.nan,
        micro_batch_size=settings.micro_batch_size,
        log_file=str(outcome.log_file),
        job_id=outcome.job_id,
        started_at=outcome.started_at,
    )


ADAPTER_STORE_SUFFIX = "-nemo-adapter"


def adapter_store_run(paths: RunPaths) -> str:
    """The store entry holding a run's adapter .nemo as soon as training wrote it."""
    return f"{paths.run_id}{ADAPTER_STORE_SUFFIX}"


def store_adapter(loaded: LoadedSpec, paths: RunPaths, access: S3Access | None = None,
                  on_line: LineSink = print) -> dict[str, Any]:
    """Put the trained adapter .nemo in the artifact store at once (its own entry, manifest last).

    Evaluation restores it from there, so it can run on a node that never saw the training
    job's file system; the run's own publish comes later, after evaluation.
    """
    artifacts = loaded.spec.artifacts
    adapter = NemoPaths(paths).adapter_nemo(loaded.spec.peft.method)
    store = open_store(artifacts.store, artifacts.s3, access)
    metadata = {"kind": "nemo-adapter", "run_id": paths.run_id, "peftpipe_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    published = publish_directory(store, adapter_store_run(paths), {adapter.name: adapter}, metadata)
    on_line(f"adapter .nemo stored at {store.url(adapter_store_run(paths), adapter.name)}")
    return published.manifest


def restore_generation_inputs(loaded: LoadedSpec, paths: RunPaths, access: S3Access | None = None,
                              on_line: LineSink = print) -> None:
    """The base and adapter .nemo that generation reads, from the artifact store, sha256-verified.

    A local file that already matches the stored one is kept (no copy of a multi-GB file on the
    node that trained); a missing or different one is downloaded. ``nemo.nemo_path`` is the
    user's own file and is read where it is.
    """
    artifacts = loaded.spec.artifacts
    store = open_store(artifacts.store, artifacts.s3, access)
    nemo_paths = NemoPaths(paths)
    reference = json.loads(base_reference_file(paths).read_text())
    if reference.get("store_run"):
        restore(store, reference["store_run"], BASE_NEMO_KEY, base_nemo(loaded, nemo_paths))
        on_line(f"base .nemo restored from {reference['store_run']} (sha256 verified)")
    adapter = nemo_paths.adapter_nemo(loaded.spec.peft.method)
    restore(store, adapter_store_run(paths), adapter.name, adapter)
    on_line(f"adapter .nemo restored from {adapter_store_run(paths)} (sha256 verified)")


def nemo_evaluate_stage(loaded: LoadedSpec, paths: RunPaths, on_line: LineSink = print,
                        backend: Backend | None = None, access: S3Access | None = None) -> dict[str, Any]:
    """``megatron_gpt_generate.py`` on the test split with the trained adapter, then the pipeline's own scores."""
    restore_generation_inputs(loaded, paths, access, on_line)
    nemo_paths = NemoPaths(paths)
    settings = AttemptSettings(1, loaded.spec.train.micro_batch_size)
    outcome = _run(loaded, paths, stage_command(loaded, paths, "evaluate", settings, None), backend, on_line)
    # The whole log: trainer.test's results table (test_loss) may be above the tail.
    log_text = outcome.log_file.read_text(errors="replace")
    metrics = evaluation_metrics(loaded.spec, jobs.profile_of(loaded), nemo_paths, log_text)
    if outcome.job_id:
        metrics["job_id"] = outcome.job_id
    paths.metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def nemo_run_files(loaded: LoadedSpec, paths: RunPaths) -> dict[str, Path]:
    """What a finished nemo run publishes: the adapter .nemo, the base .nemo's reference, NeMo's logs.

    The base .nemo itself is not copied into every run: ``base_nemo.json`` names the store
    entry (or ``nemo.nemo_path``) and its sha256.
    """
    nemo_paths = NemoPaths(paths)
    adapter = nemo_paths.adapter_nemo(loaded.spec.peft.method)
    files = {
        f"adapter/{adapter.name}": adapter,
        "base_nemo.json": base_reference_file(paths),
        "base_model.json": paths.base_model_file,
        "data/stats.json": paths.data_dir / "stats.json",
        # The completed attempt's command; every attempt's own is under jobs/.
        "finetune/config.json": paths.stage_config("finetune", paths.last_attempt("finetune")),
        "evaluate/config.json": paths.stage_config("evaluate"),
        "evaluate/predictions.jsonl": paths.predictions_file,
        "evaluate/metrics.json": paths.metrics_file,
    }
    if paths.stage_config("convert").is_file():
        files["convert/config.json"] = paths.stage_config("convert")
    # NeMo's own logs in explicit_log_dir (nemo_log_globalrank-*.txt, hparams.yaml, ...), not checkpoints.
    if nemo_paths.log_dir.is_dir():
        files.update({f"finetune/nemo/{p.name}": p for p in sorted(nemo_paths.log_dir.iterdir()) if p.is_file()})
    files.update(paths.attempt_files(STAGES))
    return files
