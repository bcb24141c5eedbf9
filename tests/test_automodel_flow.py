"""``engine: automodel`` for real on CPU: NeMo AutoModel's own recipe trains the tiny model through the
finetune flow, on the local backend and on the Slurm test cluster, through an OOM retry and a kill.

AutoModel runs from .venv-automodel (scripts/setup_automodel.sh, which the test command runs) through
the engine's launcher; the only thing not AutoModel's is the launcher's redirection of its three
CUDA-only calls and, in the OOM test, the injected out-of-memory error (faults.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, write_spec

pytestmark = pytest.mark.e2e

AUTOMODEL = {"venv": str(REPO / ".venv-automodel"), "device": "cpu", "strategy": "ddp",
             # AutoModel's default RMSNorm is torch.compile'd: ~15 s of C++ compilation on a CPU.
             "rms_norm": "torch"}


def automodel_spec(tmp_path: Path, hub_endpoint: str, changes: dict[str, Any] | None = None) -> Path:
    return write_spec(tmp_path, {
        "engine": "automodel", "automodel": AUTOMODEL,
        "model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
        "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{tmp_path / 'store'}",
        "train.precision": "fp32", "train.max_steps": 10, "train.checkpoint_every": 3,
        "train.global_batch_size": 8, "train.micro_batch_size": 4, "train.warmup_steps": 2,
        **(changes or {})})


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "finetune" / "metrics.jsonl").read_text().splitlines()]


def assert_adapter_loads_with_stock_peft(run_dir: Path) -> None:
    """AutoModel's adapter folder is a standard PEFT adapter: peft loads every tensor, and training moved lora_B."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base_path = json.loads((run_dir / "base_model.json").read_text())["path"]
    adapter = run_dir / "finetune" / "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter)
    loaded = model.state_dict()
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all(".lora_" in key for key in saved)
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded[key.replace(".weight", ".default.weight")], tensor)
    assert any(tensor.abs().sum() > 0 for key, tensor in saved.items() if "lora_B" in key)


def assert_evaluated_and_published(tmp_path: Path, run_id: str, run_dir: Path) -> None:
    predictions = (run_dir / "evaluate" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == len((run_dir / "data" / "test.jsonl").read_text().splitlines()) > 0
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert {"exact_match", "exact_match_normalized", "f1", "loss"} <= set(metrics) and metrics["loss"] > 0
    manifest = json.loads((tmp_path / "store" / run_id / "manifest.json").read_text())
    keys = {obj["key"] for obj in manifest["objects"]}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "finetune/metrics.jsonl",
            "jobs/finetune/attempt-1.automodel.yaml", "finetune/automodel/training.jsonl",
            "evaluate/predictions.jsonl", "evaluate/metrics.json"} <= keys
    assert manifest["spec"]["engine"] == "automodel"


def test_local_backend_flow(tmp_path: Path, hub_endpoint: str, prefect_api) -> None:
    """(a) The whole finetune flow with AutoModel as the fine-tune stage, on this machine."""
    from flows.finetune import finetune
    from flows.report import stage_rows

    state = finetune(spec_path=str(automodel_spec(tmp_path, hub_endpoint)), run_id="am-local", return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    names = [row.name for row in stage_rows(state.state_details.flow_run_id)]
    assert names == ["fetch-model", "prepare-data", "finetune-attempt1-mbs4", "evaluate", "publish"]
    run_dir = tmp_path / "runs" / "am-local"
    curve = losses(run_dir)
    assert len(curve) == 10
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 1.0, curve
    log = (run_dir / "finetune" / "attempt-1" / "output.log").read_text()
    assert "nemo_automodel.recipes.llm.train_ft" in log or "TrainFinetuneRecipeForNextTokenPrediction" in log
    summary = json.loads((run_dir / "finetune" / "train_summary.json").read_text())
    assert summary["final_step"] == 10 and summary["resumed_from_step"] is None
    assert_adapter_loads_with_stock_peft(run_dir)
    assert_evaluated_and_published(tmp_path, "am-local", run_dir)


@pytest.mark.slurm
def test_slurm_two_ranks_ddp_on_gloo(tmp_path: Path, hub_endpoint: str, prefect_api, slurm_cluster: str) -> None:
    """(b) The same flow as Slurm jobs on the test cluster: torchrun with 2 ranks, DDP over gloo."""
    from flows.finetune import finetune

    spec = automodel_spec(tmp_path, hub_endpoint, {
        "train.devices": 2, "train.micro_batch_size": 2, "execution.backend": "slurm",
        "execution.slurm": {"mem": "4G", "cpus_per_task": 1, "poll_max_interval_s": 2}})
    state = finetune(spec_path=str(spec), run_id="am-slurm", return_state=True)
    run_dir = tmp_path / "runs" / "am-slurm"
    # On failure, the jobs' own logs: the flow's message carries one line of evidence only.
    assert state.is_completed(), (state.result(raise_on_failure=False),
                                  [log.read_text()[-6000:] for log in run_dir.glob("finetune/attempt-*/slurm-*.out")])
    attempt = run_dir / "finetune" / "attempt-1"
    script = (attempt / "job.sbatch").read_text()
    assert "--nproc_per_node=2" in script and str(REPO / ".venv-automodel" / "bin" / "python") in script
    log = next(attempt.glob("slurm-*.out")).read_text()
    assert "initializing torch distributed with 2 workers" in log
    curve = losses(run_dir)
    assert len(curve) == 10 and sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 1.0, curve
    assert_adapter_loads_with_stock_peft(run_dir)
    assert_evaluated_and_published(tmp_path, "am-slurm", run_dir)


def test_oom_retry_resumes_from_automodels_checkpoint_at_the_lower_local_batch(
        tmp_path: Path, hub_endpoint: str, prefect_api, monkeypatch: pytest.MonkeyPatch) -> None:
    """(c) An OOM at local batch 4 from step 4 on; attempt 2 at local batch 2 resumes from AutoModel's
    checkpoint of step 3 with the same global batch of 8, and follows an uninterrupted local-batch-2 run."""
    from prefect.artifacts import Artifact

    from flows.finetune import finetune
    from peftpipe.engines.automodel.stages import finetune_stage
    from peftpipe.retry import AttemptSettings
    from peftpipe.stages import prepare_stage, run_paths
    from peftpipe.validation import load_spec

    monkeypatch.setenv("PEFTPIPE_FAULT_OOM_ABOVE_MBS", "2")
    monkeypatch.setenv("PEFTPIPE_FAULT_OOM_FROM_STEP", "4")
    state = finetune(spec_path=str(automodel_spec(tmp_path / "oom", hub_endpoint)), run_id="am-oom",
                     return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    rows = json.loads(Artifact.get("finetune-attempts").data)
    assert [(r["kind"], r["micro_batch_size"], r["gradient_accumulation"]) for r in rows] == [
        ("gpu_oom", 4, 2), ("none", 2, 4)]
    assert rows[0]["evidence"].startswith("torch.OutOfMemoryError: CUDA out of memory.")
    run_dir = tmp_path / "oom" / "runs" / "am-oom"
    retry_log = (run_dir / "finetune" / "attempt-2" / "output.log").read_text()
    assert "Loading checkpoint from" in retry_log and "epoch_0_step_2" in retry_log
    assert json.loads((run_dir / "finetune" / "train_summary.json").read_text())["resumed_from_step"] == 3
    retry_yaml = (run_dir / "finetune" / "attempt-2" / "automodel.yaml").read_text()
    assert "global_batch_size: 8\n  local_batch_size: 2\n" in retry_yaml

    # The reference: the same spec at local batch 2 from the start, one uninterrupted AutoModel run.
    monkeypatch.delenv("PEFTPIPE_FAULT_OOM_ABOVE_MBS")
    loaded = load_spec(automodel_spec(tmp_path / "ref", hub_endpoint, {"train.micro_batch_size": 2}))
    reference = run_paths(loaded, "am-reference")
    prepare_stage(loaded, reference)
    model_path = Path(json.loads((run_dir / "base_model.json").read_text())["path"])
    finetune_stage(loaded, reference, model_path, AttemptSettings(attempt=1, micro_batch_size=2), on_line=lambda _: None)
    # Same data order and the same optimisation: the curves agree to float32 round-off.
    assert losses(run_dir) == pytest.approx(losses(reference.root), rel=1e-4)


def launcher_pids(config_file: Path) -> list[int]:
    """The AutoModel rank processes of one attempt (the launcher with that attempt's YAML)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if any(arg.endswith(b"launcher.py") for arg in cmdline) and str(config_file).encode() in cmdline \
                and b"torch.distributed.run" not in cmdline:
            pids.append(int(entry.name))
    return pids


def test_killed_run_resumes_with_the_same_run_id(tmp_path: Path, hub_endpoint: str, prefect_api) -> None:
    """(d) `peftpipe run`: the AutoModel process is killed after its first checkpoint; running the same
    run id again resumes from AutoModel's LATEST checkpoint and finishes."""
    from prefect.settings import PREFECT_API_URL

    spec = automodel_spec(tmp_path, hub_endpoint, {"train.max_steps": 16})
    # The session's Prefect API: each `peftpipe run` would otherwise start an ephemeral server of its own.
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "COLUMNS": "200"}
    argv = [sys.executable, "-m", "cli", "run", str(spec), "--run-id", "am-killed"]
    run_dir = tmp_path / "runs" / "am-killed"
    config_file = run_dir / "finetune" / "attempt-1" / "automodel.yaml"
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    deadline = time.monotonic() + 240
    while not (run_dir / "finetune" / "automodel" / "LATEST").exists():
        assert time.monotonic() < deadline and first.poll() is None, first.stdout.read() if first.poll() else "timeout"
        time.sleep(0.05)
    for pid in launcher_pids(config_file):
        os.kill(pid, signal.SIGKILL)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 1, output
    assert "finetune failed" in output

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert second.returncode == 0, second.stdout + second.stderr
    summary = json.loads((run_dir / "finetune" / "train_summary.json").read_text())
    assert summary["final_step"] == 16
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] >= 3
    assert (tmp_path / "store" / "am-killed" / "manifest.json").is_file()


def test_a_config_key_automodel_does_not_take_is_a_config_error(tmp_path: Path, hub_root: Path) -> None:
    """An AutoModel start-up failure is diagnosed config_error, with the line naming the key: no retry."""
    from peftpipe.engines.automodel.stages import finetune_stage
    from peftpipe.failures import FailureKind, diagnose
    from peftpipe.results import StageFailed
    from peftpipe.retry import AttemptSettings
    from peftpipe.stages import prepare_stage, run_paths
    from peftpipe.validation import load_spec

    model = hub_root / "peftpipe" / "tiny-llama"
    spec = automodel_spec(tmp_path, "http://127.0.0.1:9", {
        "model.path": str(model), "model.repo_id": None,
        "automodel": {**AUTOMODEL, "overrides": {"optimizer.betaz": [0.9, 0.99]}}})
    loaded = load_spec(spec)
    paths = run_paths(loaded, "am-config-error")
    prepare_stage(loaded, paths)
    with pytest.raises(StageFailed) as failed:
        finetune_stage(loaded, paths, model, AttemptSettings(attempt=1, micro_batch_size=4), on_line=lambda _: None)
    outcome = failed.value.outcome
    diagnosis = diagnose(outcome.state, outcome.exit_code, outcome.log_tail)
    assert diagnosis.kind is FailureKind.CONFIG_ERROR
    assert "unexpected keyword argument 'betaz'" in diagnosis.evidence
