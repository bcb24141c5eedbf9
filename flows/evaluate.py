"""The ``evaluate`` flow: score a published adapter (by run id, or the promoted one) on a test set."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from peftpipe import stages
from peftpipe.artifacts import restore
from peftpipe.paths import RunPaths
from peftpipe.promotion import read_promoted
from peftpipe.safe_names import check_run_id
from peftpipe.spec import LoadedSpec
from flows.finetune import DEFAULT_SPEC, load_or_log
from flows.store import artifact_store
from tasks.evaluate import evaluate
from tasks.fetch_model import fetch_model
from tasks.prepare_data import prepare_data


class NoAdapter(LookupError):
    """Neither a run id was given nor has the spec a promoted adapter."""


@task(name="restore-adapter", task_run_name="restore-adapter-{run_id}", cache_policy=NO_CACHE)
def restore_adapter(loaded: LoadedSpec, paths: RunPaths, run_id: str) -> dict[str, Any]:
    """Download the adapter of a published run (sha256-checked) into this evaluation's run directory."""
    store = artifact_store(loaded)
    restored = restore(store, run_id, "adapter", paths.adapter_dir)
    get_run_logger().info("adapter of run %s: %d files from %s", run_id, len(restored), store.url(run_id))
    return store.read_manifest(run_id) or {}


def resolve_run_id(loaded: LoadedSpec, run_id: str | None) -> str:
    """``run_id``, else the spec's promoted adapter (``peftpipe artifacts promoted NAME`` shows it)."""
    if run_id:
        return run_id
    pointer = read_promoted(artifact_store(loaded), loaded.spec.name)
    if pointer is None:
        raise NoAdapter(f"spec {loaded.spec.name!r} has no promoted adapter in {loaded.spec.artifacts.store}."
                        " Fix: pass run_id, or let the retune flow promote one.")
    return pointer["run_id"]


@flow(name="evaluate", log_prints=True)
def evaluate_adapter(spec_path: str = DEFAULT_SPEC, run_id: str | None = None, test_file: str | None = None,
                     eval_id: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a published adapter with the spec's base model and generation settings.

    Args:
        spec_path: The run spec: base model, artifact store, evaluation settings and (by default) test set.
        run_id: The published run whose adapter is scored; default: the spec's promoted adapter.
        test_file: A NeMo JSONL test file (input/output per line); default: the spec's test split.
        eval_id: The evaluation's run directory name; default: ``<run id>-eval-<UTC time>``.
        overrides: Dotted spec keys, e.g. ``{"evaluation.max_records": 50}``.
    """
    for parameter, value in (("run_id", run_id), ("eval_id", eval_id)):
        if value is not None:
            check_run_id(value, f"{parameter} parameter")
    loaded = load_or_log(spec_path, overrides or {})
    source = resolve_run_id(loaded, run_id)
    eval_id = eval_id or stages.new_run_id(f"{source}-eval")
    paths = stages.run_paths(loaded, eval_id)
    manifest = restore_adapter(loaded, paths, source)
    fetched = fetch_model(loaded, paths)
    trained_on = (manifest.get("base_model") or {}).get("commit_sha")
    if trained_on and fetched.commit_sha and trained_on != fetched.commit_sha:
        get_run_logger().warning("the adapter was trained on base model commit %s, evaluated on %s",
                                 trained_on, fetched.commit_sha)
    if test_file:
        paths.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(test_file), paths.data_file("test"))
    else:
        prepare_data(loaded, paths)
    metrics = evaluate(loaded, paths, fetched.path)
    create_table_artifact([{"run": source, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}],
                          key="adapter-evaluation", description=f"Adapter of {source} on {test_file or 'the test split'}")
    return {"run_id": source, "eval_id": eval_id, "metrics": metrics, "test_file": str(paths.data_file("test"))}
