"""The ``finetune`` flow: fetch model, prepare data, fine-tune, evaluate, publish."""

from __future__ import annotations

import shutil
from typing import Any

from prefect import flow, get_run_logger

from peftpipe import stages
from peftpipe.slurm.client import SlurmClient
from peftpipe.slurm.jobs import job_name_prefix
from peftpipe.validation import load_spec
from flows.attempts import finetune_with_retries
from flows.nemo import nemo_stages
from tasks.evaluate import evaluate
from tasks.fetch_model import fetch_model
from tasks.prepare_data import prepare_data
from tasks.publish import publish


def cancel_slurm_jobs(flow: Any, flow_run: Any, state: Any) -> None:
    """On cancellation (CLI or UI), scancel every queued or running job of this run, found by name.

    The task that watches a job cancels it too when it is interrupted; this hook covers a job
    whose watcher never got to run its cleanup.
    """
    run_id = (flow_run.parameters or {}).get("run_id")
    if not run_id or shutil.which("squeue") is None:
        return
    cancelled = SlurmClient().cancel_named(job_name_prefix(run_id))
    if cancelled:
        print(f"cancelled Slurm jobs {', '.join(cancelled)} of run {run_id}")


@flow(name="finetune", flow_run_name="{run_id}", log_prints=True, validate_parameters=True,
      on_cancellation=[cancel_slurm_jobs])
def finetune(spec_path: str, run_id: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every stage of a PEFT fine-tune described by the run spec at ``spec_path``.

    ``overrides`` maps dotted spec keys to values (``{"train.micro_batch_size": 2}``); the
    spec is validated with them before any stage starts.
    """
    loaded = load_spec(spec_path, overrides)
    paths = stages.run_paths(loaded, run_id)
    get_run_logger().info("run %s in %s", run_id, paths.root)
    model = fetch_model(loaded, paths)
    data = prepare_data(loaded, paths)
    if loaded.spec.engine == "nemo":
        trained, metrics = nemo_stages(loaded, paths, model)
    else:
        trained = finetune_with_retries(loaded, paths, model.path)
        metrics = evaluate(loaded, paths, model.path)
    manifest = publish(loaded, paths, run_id, model, data, metrics)
    return {
        "run_id": run_id,
        "run_dir": str(paths.root),
        "model": {"repo_id": model.repo_id, "commit_sha": model.commit_sha},
        "data": {"counts": data.counts, "fingerprint": data.fingerprint},
        "train": {"final_step": trained.final_step, "final_loss": trained.final_loss,
                  "resumed_from_step": trained.resumed_from_step, "wall_time_s": trained.wall_time_s},
        "metrics": metrics,
        "manifest_url": manifest["manifest_url"],
        "objects": len(manifest["objects"]),
    }
