"""The deployments of deployments/prefect.yaml, run the way a person runs them: the prefect CLI
against a real server and process worker (scripts/start_prefect_stack.sh), jobs on real Slurm."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from peftpipe.slurm.client import SlurmClient
from tests.prefect_stack import DeploymentRun, Stack, run_id_of, slurm_spec

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

UI_KEYS = {"finetune-job-script", "evaluate-job-script", "finetune-attempts", "eval-metrics", "training-loss",
           "run-artifacts", "base-vs-adapter"}


def jobs_named(run_id: str) -> list[dict[str, str]]:
    fields = "JobID,JobName,State"
    output = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1hour", "-o", fields], capture_output=True,
                            text=True, check=True).stdout
    rows = [dict(zip(fields.split(","), line.split("|"))) for line in output.splitlines()]
    return [row for row in rows if row["JobName"].startswith(f"peftpipe-{run_id}-")]


def test_deployment_run_with_watch_runs_every_stage_on_slurm(slurm_deployment_run: DeploymentRun,
                                                             prefect_stack: Stack) -> None:
    run = slurm_deployment_run
    assert run.returncode == 0, run.output
    assert "Completed" in run.output
    states = {row["JobName"].rsplit("-", 1)[1]: row["State"] for row in jobs_named(run.run_id)}
    assert states == {"finetune": "COMPLETED", "evaluate": "COMPLETED"}
    flow_run = prefect_stack.flow_run(run.flow_run_id)
    assert flow_run["name"] == run.run_id and flow_run["parameters"]["micro_batch_size"] == 4
    deployment = prefect_stack.api("GET", "/deployments/name/finetune/tiny")
    assert deployment["job_variables"]["stream_output"] is False  # a worker restart must not kill the run
    pool = prefect_stack.api("GET", "/work_pools/peftpipe-process")
    assert pool["base_job_template"]["variables"]["properties"]["stream_output"]["default"] is False
    artifacts = prefect_stack.artifacts(run.flow_run_id)
    assert UI_KEYS <= set(artifacts), sorted(artifacts)
    script = artifacts["finetune-job-script"]["data"]
    assert f"#SBATCH --job-name=peftpipe-{run.run_id}-finetune" in script and "```bash" in script
    assert {row["metric"] for row in _table(artifacts["eval-metrics"])} >= {"f1", "exact_match", "loss"}
    assert "Training loss" in artifacts["training-loss"]["data"]
    # The spec's first run scores the base model too: one row per metric, base vs adapter with the delta.
    assert {row["metric"] for row in _table(artifacts["base-vs-adapter"])} >= {"f1", "exact_match", "loss"}
    assert "manifest.json" in artifacts["run-artifacts"]["data"]


def test_export_deployment_merges_the_published_run(slurm_deployment_run: DeploymentRun,
                                                   prefect_stack: Stack) -> None:
    """`prefect deployment run 'export/adapter'` on the run just published: merged, parity-checked, stored."""
    import json

    run = slurm_deployment_run
    assert run.returncode == 0, run.output
    result = prefect_stack.prefect("deployment", "run", "export/adapter", "--param", f"spec_path={run.spec}",
                                   "--param", f"run_id={run.run_id}", "--param", "merge=true",
                                   "--param", "max_shard_size=200KB", "--watch")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    flow_run_id = run_id_of(output)
    artifact = prefect_stack.artifacts(flow_run_id)["export"]["data"]
    assert "Merged model parity: max |logit diff|" in artifact and "greedy generations equal: True" in artifact
    manifest = json.loads((run.spec.parent / "store" / run.run_id / "manifest.json").read_text())
    keys = {o["key"] for o in manifest["objects"]}
    assert {"export/adapter/README.md", "export/merged/model.safetensors.index.json", "export/parity.json"} <= keys
    assert manifest["export"]["parity"]["max_abs_logit_diff"] <= manifest["export"]["parity"]["tolerance"]


def _table(artifact: dict) -> list[dict]:
    import json

    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


def test_invalid_parameter_fails_before_any_job_with_the_validators_message(
        prefect_stack: Stack, hub_endpoint: str, slurm_cluster: str, tmp_path: Path) -> None:
    spec = slurm_spec(tmp_path, hub_endpoint)
    run_id = f"deploy-invalid-mbs-{os.getpid()}"  # unique: the cluster and its sacct history are shared
    result = prefect_stack.prefect("deployment", "run", "finetune/tiny", "--param", f"spec_path={spec}",
                                   "--param", f"run_id={run_id}", "--param", "micro_batch_size=3", "--watch")
    assert result.returncode != 0, result.stdout
    flow_run_id = run_id_of(result.stdout + result.stderr)
    assert prefect_stack.flow_run(flow_run_id)["state_type"] == "FAILED"
    logs = prefect_stack.logs(flow_run_id)
    assert ("train.global_batch_size: 8 is not divisible by micro_batch_size 3 x data-parallel 1."
            " Fix: use a multiple of 3.") in logs, logs
    assert "nothing was submitted" in logs
    assert jobs_named(run_id) == []
    assert not (tmp_path / "runs" / run_id).exists()


def test_cli_cancel_of_a_deployment_run_leaves_no_slurm_job(prefect_stack: Stack, hub_endpoint: str,
                                                            slurm_cluster: str, tmp_path: Path) -> None:
    spec = slurm_spec(tmp_path, hub_endpoint, **{"train.max_steps": 2000})
    run_id = f"deploy-cancel-{os.getpid()}"
    result = prefect_stack.prefect("deployment", "run", "finetune/tiny", "--param", f"spec_path={spec}",
                                   "--param", f"run_id={run_id}")
    assert result.returncode == 0, result.stdout + result.stderr
    flow_run_id = run_id_of(result.stdout)
    client = SlurmClient()
    deadline = time.monotonic() + 240
    while not any(row["JobName"].endswith("-finetune") and row["State"] == "RUNNING" for row in jobs_named(run_id)):
        assert time.monotonic() < deadline, prefect_stack.flow_run(flow_run_id)["state_name"]
        time.sleep(1)
    cancel = prefect_stack.prefect("flow-run", "cancel", flow_run_id)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    asked = time.monotonic()
    while client.queued_jobs(f"peftpipe-{run_id}-"):
        assert time.monotonic() - asked < 60, f"jobs of {run_id} still queued 60 s after the cancel"
        time.sleep(0.5)
    assert prefect_stack.wait_for_state(flow_run_id, {"CANCELLED"}, timeout_s=120)["state_type"] == "CANCELLED"
    states = [row["State"] for row in jobs_named(run_id)]
    assert states and all(state.startswith("CANCELLED") for state in states), states  # "CANCELLED by 0"
