"""The stages every engine shares: fetch the model, prepare the data, publish the run.

The engine-specific stages (convert, fine-tune, evaluate) live in the engine's folder
(``peftpipe/engines/<name>/stages.py``) behind :class:`~peftpipe.engines.Engine`. Prefect tasks
wrap these; nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftpipe import __version__
from peftpipe.artifacts import Progress, publish_directory
from peftpipe.stores import open_store
from peftpipe.backends import LineSink
from peftpipe.data.fingerprints import FINGERPRINTS_FILE, write_fingerprints
from peftpipe.data.prepare import PreparedData, default_cache_dir, prepare_dataset
from peftpipe.engines import engine_for
from peftpipe.experiment_loggers import logger_files
from peftpipe.hub.adapter_reference import point_at_hub
from peftpipe.hub.fetch import DEFAULT_TOKEN_HINT, FetchedModel, fetch_model, use_local_model
from peftpipe.paths import RunPaths
from peftpipe.safe_names import check_run_id
from peftpipe.spec import LoadedSpec

if TYPE_CHECKING:
    from peftpipe.artifacts_s3 import S3Access


def new_run_id(name: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}"


def run_paths(loaded: LoadedSpec, run_id: str) -> RunPaths:
    check_run_id(run_id)  # the run directory must stay inside the workdir
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
    paths.base_model_file.write_text(json.dumps(reference, indent=2) + "\n")
    check_fetched_model(loaded, paths, fetched.path)
    return fetched


def check_fetched_model(loaded: LoadedSpec, paths: RunPaths, model_dir: Path) -> None:
    """What validate could not check without the model's config.json, before any job: target modules and
    family support (``model_fit``); the model's layout is recorded in ``model_layout.json``."""
    from peftpipe.model_fit import model_issues
    from peftpipe.model_layout import write_layout
    from peftpipe.spec_issues import SpecError

    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return
    layout, issues = model_issues(loaded.spec, json.loads(config_file.read_text(encoding="utf-8")))
    if issues:
        raise SpecError(issues)
    if layout is not None:
        write_layout(layout, paths.model_layout_file)


def prepare_stage(loaded: LoadedSpec, paths: RunPaths) -> PreparedData:
    """Convert the dataset, or reuse the shared cache's copy when inputs and options are unchanged."""
    return prepare_dataset(loaded, paths.data_dir, default_cache_dir(loaded.spec))


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
    point_at_hub(paths.adapter_dir, model.repo_id, model.commit_sha)
    files = engine_for(loaded.spec.engine).run_files(loaded, paths)
    files.update(logger_files(paths.finetune_dir))  # TensorBoard events, MLflow's store: whatever the engine
    # What the adapter trained on, record by record, so a later comparison can tell a leaked test set.
    files[f"data/{FINGERPRINTS_FILE}"] = write_fingerprints(paths.data_file("train"),
                                                            paths.data_dir / FINGERPRINTS_FILE)
    published = publish_directory(store, run_id, files, metadata)
    objects = len(published.manifest["objects"])
    on_line(f"{published.transferred} of {objects} objects sent, {objects - published.transferred} already stored")
    paths.manifest_file.write_text(json.dumps(published.manifest, indent=2) + "\n")
    return published.manifest
