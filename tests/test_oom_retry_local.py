"""OOM-adaptive retries through Prefect on the local backend and on real Slurm, with the training script's
fault injection: one card per artifact key on the flow run's page, the summary `peftpipe run` prints (each
attempt's own step and loss; kept in test-output/), and the experiment loggers read back."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import write_spec
from tests.test_experiment_loggers import check_against_metrics_file

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_oom_retries_keep_the_global_batch_and_resume(tmp_path: Path, hub_endpoint: str, prefect_api,
                                                      monkeypatch: pytest.MonkeyPatch, backend: str,
                                                      request: pytest.FixtureRequest) -> None:
    from safetensors.torch import load_file
    import torch

    from flows.finetune import finetune
    from flows.report import stage_rows

    common = {"model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
              "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{tmp_path / 'store'}",
              "train.max_steps": 10, "train.checkpoint_every": 5, "train.global_batch_size": 8,
              "execution.backend": backend, "execution.slurm": {"mem": "2G", "cpus_per_task": 1,
                                                                "poll_max_interval_s": 2}}
    if backend == "slurm":
        request.getfixturevalue("slurm_cluster")
    # The experiment loggers ride along: the flow feeds them from metrics.jsonl, whatever the backend.
    loggers = {"train.loggers": ["tensorboard", "mlflow"]}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = write_spec(tmp_path / "oom", {**common, **loggers, "train.micro_batch_size": 8})
    reference_spec = write_spec(tmp_path / "ref", {**common, "train.micro_batch_size": 2})

    monkeypatch.setenv("PEFTPIPE_FAULT_OOM_ABOVE_MBS", "2")
    monkeypatch.setenv("PEFTPIPE_FAULT_OOM_FROM_STEP", "6")
    state = finetune(spec_path=str(spec), run_id=f"oom-{backend}", return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    names = [row.name for row in stage_rows(state.state_details.flow_run_id)]
    finetunes = [n for n in names if n.startswith("finetune")]
    assert finetunes == ["finetune-attempt1-mbs8", "finetune-attempt2-mbs4", "finetune-attempt3-mbs2"]
    flow_run_id = state.state_details.flow_run_id
    cards = flow_run_artifacts(flow_run_id)
    # One card per key on the flow run's page after two retries: the attempts table holds all three.
    assert [key for key, count in Counter(card.key for card in cards).items() if count > 1] == []
    attempts = [card for card in cards if card.key == "finetune-attempts"]
    assert len(attempts) == 1
    rows = json.loads(attempts[0].data)
    assert [(r["kind"], r["micro_batch_size"], r["gradient_accumulation"]) for r in rows] == [
        ("gpu_oom", 8, 1), ("gpu_oom", 4, 2), ("none", 2, 4)]
    assert rows[0]["evidence"].startswith("torch.OutOfMemoryError: CUDA out of memory.")
    if backend == "slurm":
        assert all(row["job_id"] for row in rows)
        assert len({row["job_id"] for row in rows}) == 3
        assert rows[1]["resubmitted_after_s"] is not None and rows[1]["resubmitted_after_s"] < 30
    check_printed_summary(state, backend, tmp_path)
    run = tmp_path / "runs" / f"oom-{backend}" / "finetune"
    assert json.loads((run / "train_summary.json").read_text())["resumed_from_step"] == 5
    # TensorBoard and MLflow hold metrics.jsonl's values at every step, the twice redone step 6 included.
    losses = check_against_metrics_file(run, "tiny-squad-lora", f"oom-{backend}")
    assert sorted(losses) == list(range(1, 11))
    published = tmp_path / "store" / f"oom-{backend}" / "finetune"
    assert (published / "mlflow.db").is_file() and list((published / "tensorboard").glob("events.out.tfevents.*"))

    monkeypatch.delenv("PEFTPIPE_FAULT_OOM_ABOVE_MBS")
    reference = finetune(spec_path=str(reference_spec), run_id=f"reference-{backend}", return_state=True)
    assert reference.is_completed()
    ref = tmp_path / "runs" / f"reference-{backend}" / "finetune"

    def curve(directory: Path) -> list[float]:
        return [json.loads(line)["loss"] for line in (directory / "metrics.jsonl").read_text().splitlines()]

    assert len(curve(run)) == 10
    assert curve(run) == pytest.approx(curve(ref), rel=1e-4)
    ours = load_file(run / "adapter" / "adapter_model.safetensors")
    theirs = load_file(ref / "adapter" / "adapter_model.safetensors")
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=1e-3, atol=1e-5)


def flow_run_artifacts(flow_run_id):  # noqa: ANN001, ANN201 - a UUID; Prefect's Artifact rows
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))


def flow_end_after_publish(flow_run_id) -> str:  # noqa: ANN001 - a UUID
    """How long after publish ended the flow run reached its final state (evidence only: no timing is asserted)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    published = max(run.end_time for run in tasks if run.name == "publish")
    return (f"flow run {flow_run.state_name} at {flow_run.end_time:%H:%M:%S.%f}, "
            f"{(flow_run.end_time - published).total_seconds():.1f} s after publish ended\n")


def check_printed_summary(state, backend: str, tmp_path: Path) -> None:  # noqa: ANN001 - a Prefect State
    """What `peftpipe run` prints at the end (the same function), kept in test-output/ as evidence."""
    from rich.console import Console

    from cli.run_summary import print_summary
    from flows.report import stage_rows

    console = Console(record=True, width=200)
    summary = state.result()
    print_summary(console, f"peftpipe run oom-{backend}: {state.name}", stage_rows(state.state_details.flow_run_id),
                  summary)
    text = console.export_text() + flow_end_after_publish(state.state_details.flow_run_id)
    output = Path(__file__).resolve().parents[1] / "test-output"
    output.mkdir(exist_ok=True)
    (output / f"oom-retry-{backend}-summary.txt").write_text(text)
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in text.splitlines() if line.startswith("│")}
    job = r", job \d+" if backend == "slurm" else ""
    # Each attempt row has its own last step and loss (attempts 1 and 2 fail at step 6, resumed from 5).
    for name, mbs, accumulation in (("finetune-attempt1-mbs8", 8, 1), ("finetune-attempt2-mbs4", 4, 2)):
        assert rows[name][0] == "Failed", text
        assert re.fullmatch(rf"failed \(gpu_oom\) at step 6, loss \d+\.\d{{4}}; mbs {mbs} x accumulation "
                            rf"{accumulation}{job}", rows[name][2]), text
    final_loss = summary["train"]["final_loss"]
    assert re.fullmatch(rf"completed step 10, loss {final_loss:.4f}; mbs 2 x accumulation 4{job}, resumed from 5",
                        rows["finetune-attempt3-mbs2"][2]), text
    for stage in ("fetch-model", "prepare-data", "finetune-attempt3-mbs2", "evaluate", "publish"):
        assert rows[stage][0] == "Completed", text
    assert state.name == "Completed" and "metrics (test split): exact_match" in text, text
