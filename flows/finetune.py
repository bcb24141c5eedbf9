"""The ``finetune`` flow: fetch model, prepare data, fine-tune, evaluate, publish."""

from __future__ import annotations

import shutil
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_flow_run

from peftpipe import stages
from peftpipe.safe_names import check_run_id
from peftpipe.slurm.client import SlurmClient
from peftpipe.slurm.jobs import job_name_prefix
from peftpipe.paths import RunPaths
from peftpipe.run_lock import run_directory_lock
from peftpipe.spec import LoadedSpec
from blocks.slurm_cluster import SlurmCluster
from peftpipe.validation import SpecError, load_spec
from flows.attempts import finetune_with_retries
from flows.baseline import baseline_wanted, publish_baseline_artifact
from flows.log_shipping import hold_logs_through_outages, keep_unsent_lines_in
from flows.runs_table import publish_runs_table
from flows.ui_artifacts import publish_run_artifacts
from peftpipe.engines import engine_for
from tasks.evaluate import evaluate
from tasks.fetch_model import fetch_model
from tasks.prepare_data import prepare_data
from tasks.prepare_engine import prepare_engine
from tasks.publish import publish

DEFAULT_SPEC = "examples/tiny/spec.yaml"
# Flow-run log lines the Prefect API never took (it was down when the process ended), in the run directory.
UNSENT_LOG = "flow-run-log.unsent.txt"
# Top-level parameters of the deployment (what `prefect deployment run --param` takes) and the
# spec keys they override; anything else goes through `overrides` with dotted keys.
PARAMETER_KEYS = {
    "micro_batch_size": "train.micro_batch_size",
    "global_batch_size": "train.global_batch_size",
    "max_steps": "train.max_steps",
    "peft_scheme": "peft.method",
    "model": "model.repo_id",
}


def cancel_slurm_jobs(flow: Any, flow_run: Any, state: Any) -> None:
    """On cancellation (CLI or UI), scancel every queued or running job of this run, found by name.

    The task that watches a job cancels it too when it is interrupted; this hook covers a job
    whose watcher never got to run its cleanup. A generated run id is the flow run's name (set
    when the flow starts), since the hook runs in another process and sees only the flow run.
    """
    run_id = (flow_run.parameters or {}).get("run_id") or flow_run.name
    if not run_id or shutil.which("squeue") is None:
        return
    cancelled = SlurmClient().cancel_named(job_name_prefix(run_id))
    if cancelled:
        print(f"cancelled Slurm jobs {', '.join(cancelled)} of run {run_id}")


def spec_overrides(overrides: dict[str, Any] | None, **parameters: Any) -> dict[str, Any]:
    """Dotted spec overrides from the top-level parameters that are set, over ``overrides``."""
    merged = dict(overrides or {})
    merged.update({PARAMETER_KEYS[name]: value for name, value in parameters.items() if value is not None})
    return merged


def load_or_log(spec_path: str, overrides: dict[str, Any]) -> LoadedSpec:
    """The validated spec; on failure every problem goes to the run log as its own line first."""
    try:
        loaded = load_spec(spec_path, overrides)
        block_name = loaded.spec.execution.slurm_block
        if block_name:
            # The cluster block's settings fill what the spec leaves unset; the spec's own win.
            defaults = {"execution": {"slurm": SlurmCluster.load(block_name).slurm_defaults()}}
            loaded = load_spec(spec_path, overrides, defaults)
        return loaded
    except SpecError as error:
        logger = get_run_logger()
        logger.error("%s: invalid run spec (nothing was submitted)", spec_path)
        for issue in error.issues:
            logger.error("  %s", issue)
        raise


def _run_name() -> str:
    return current_flow_run.parameters.get("run_id") or "finetune-pending"


def name_flow_run(run_id: str) -> None:
    """Rename the flow run to the generated run id (or sweep id), so the UI, the CLI and the cancel hook show it."""
    from prefect.client.orchestration import get_client

    flow_run_id = current_flow_run.id
    if flow_run_id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, name=run_id)


@flow(name="finetune", flow_run_name=_run_name, log_prints=True, validate_parameters=True,
      on_cancellation=[cancel_slurm_jobs])
def finetune(spec_path: str = DEFAULT_SPEC, run_id: str | None = None, micro_batch_size: int | None = None,
             global_batch_size: int | None = None, max_steps: int | None = None, peft_scheme: str | None = None,
             model: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every stage of a PEFT fine-tune described by the run spec at ``spec_path``.

    Args:
        spec_path: The run spec (relative paths: to the worker's working directory, the repository).
        run_id: Reuse a run directory (resumes training); default: ``<spec name>-<UTC time>``.
        micro_batch_size: Overrides ``train.micro_batch_size``.
        global_batch_size: Overrides ``train.global_batch_size``.
        max_steps: Overrides ``train.max_steps``.
        peft_scheme: Overrides ``peft.method`` (lora, ia3, ptuning, adapter).
        model: Overrides ``model.repo_id``.
        overrides: Any other dotted spec keys, e.g. ``{"train.learning_rate": 1e-4}``.

    The spec is validated with every override before any stage starts or any job is submitted.
    """
    hold_logs_through_outages()
    if run_id is not None:
        check_run_id(run_id, "run_id parameter")
    changes = spec_overrides(overrides, micro_batch_size=micro_batch_size, global_batch_size=global_batch_size,
                             max_steps=max_steps, peft_scheme=peft_scheme, model=model)
    loaded = load_or_log(spec_path, changes)
    if run_id is None:
        run_id = stages.new_run_id(loaded.spec.name)
        name_flow_run(run_id)
    if loaded.spec.evaluation.baseline is None:
        changes = {**changes, "evaluation.baseline": baseline_wanted(loaded, run_id)}
        loaded = load_or_log(spec_path, changes)
    paths = stages.run_paths(loaded, run_id)
    keep_unsent_lines_in(current_flow_run.id, paths.root / UNSENT_LOG)
    with run_directory_lock(paths.root):
        return _run_stages(loaded, paths, run_id)


def _run_stages(loaded: LoadedSpec, paths: RunPaths, run_id: str) -> dict[str, Any]:
    get_run_logger().info("run %s in %s", run_id, paths.root)
    fetched = fetch_model(loaded, paths)
    data = prepare_data(loaded, paths)
    if "convert" in engine_for(loaded.spec.engine).stages:
        prepare_engine(loaded, paths, fetched)
    attempts: list = []
    trained = finetune_with_retries(loaded, paths, fetched.path, records_out=attempts)
    metrics = evaluate(loaded, paths, fetched.path)
    manifest = publish(loaded, paths, run_id, fetched, data, metrics)
    publish_run_artifacts(paths, metrics, manifest)
    publish_baseline_artifact(metrics)
    publish_runs_table(loaded)
    adapter_url = manifest["manifest_url"].rsplit("/", 1)[0] + "/adapter/"
    # The last line of the run's log: what `prefect deployment run --watch` and the UI's log show at the end.
    scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, (int, float)))
    get_run_logger().info("run %s finished: %s; adapter %s", run_id, scores, adapter_url)
    return {
        "run_id": run_id,
        "run_dir": str(paths.root),
        "model": {"repo_id": fetched.repo_id, "commit_sha": fetched.commit_sha},
        "data": {"counts": data.counts, "fingerprint": data.fingerprint},
        "train": {"final_step": trained.final_step, "final_loss": trained.final_loss,
                  "resumed_from_step": trained.resumed_from_step, "wall_time_s": trained.wall_time_s},
        "metrics": metrics,
        "manifest_url": manifest["manifest_url"],
        "adapter_url": adapter_url,
        "objects": len(manifest["objects"]),
        "attempts": [record.as_row() for record in attempts],
    }
