"""The finetune flow with ``engine: nemo`` through the real one-node Slurm cluster.

NeMo itself cannot run here; its container scripts are played by the stand-in fixture
(tests/nemo_standin/, run by the venv's python as ``container.runtime: none`` jobs), which
accepts only what the 24.03 scripts accept and writes NeMo-shaped outputs.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

ADAPTER = "megatron_gpt_peft_lora_tuning.nemo"


def job_names(run: Path, since: float) -> list[str]:
    """The stages of the run's Slurm jobs submitted since ``since``, as sacct records them.

    Waits until sacct knows every job the run directory recorded: slurmdbd takes a moment.
    """
    recorded = {f.read_text().strip() for f in run.glob("*/attempt-*/job_id")}
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 1))
    prefix = f"peftpipe-{run.name}-"
    deadline = time.monotonic() + 30
    while True:
        output = subprocess.run(["sacct", "-X", "-n", "-P", "-S", start, "-o", "JobID,JobName"], capture_output=True,
                                text=True, check=True).stdout
        rows = dict(line.split("|") for line in output.splitlines() if f"|{prefix}" in line)
        if recorded <= set(rows) or time.monotonic() > deadline:
            return sorted(name.removeprefix(prefix) for name in rows.values())
        time.sleep(1)


def nemo_spec(tmp_path: Path, hub_endpoint: str, env: dict[str, str]) -> Path:
    return write_spec(tmp_path, {
        "model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
        "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{tmp_path / 'store'}",
        "engine": "nemo",
        # TP 2 on 2 GPUs: Megatron's data-parallel size is 1, not the GPU count.
        "train.devices": 2, "train.global_batch_size": 8, "train.micro_batch_size": 4, "train.max_steps": 10,
        "train.checkpoint_every": 3, "train.precision": "bf16",
        "nemo": {"profile": "24.03", "root": str(REPO / "tests" / "nemo_standin" / "NeMo"),
                 "tensor_parallel_size": 2, "convert": {"mem": "2G"}},
        "execution.backend": "slurm",
        "execution.slurm": {"mem": "2G", "cpus_per_task": 1, "poll_max_interval_s": 2, "launcher": "srun",
                            "env": {"NEMO_STANDIN_PROFILE": "24.03", **env}},
    })


def test_nemo_flow_with_oom_retry_then_reuses_the_converted_base(tmp_path: Path, hub_endpoint: str,
                                                                  slurm_cluster: str, prefect_api) -> None:
    from prefect.artifacts import Artifact

    from flows.finetune import finetune
    from flows.report import stage_rows

    # Micro batch 4 runs out of GPU memory at step 7, after the checkpoint of step 6.
    spec = nemo_spec(tmp_path, hub_endpoint, {"NEMO_STANDIN_OOM_ABOVE_MICRO": "2", "NEMO_STANDIN_OOM_AT_STEP": "7"})
    started = time.time()
    state = finetune(spec_path=str(spec), run_id="nemo-oom", return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    result = state.result()
    names = [row.name for row in stage_rows(state.state_details.flow_run_id)]
    assert names == ["fetch-model", "prepare-data", "convert", "finetune-attempt1-mbs4", "finetune-attempt2-mbs2",
                     "evaluate", "publish"]

    rows = json.loads(Artifact.get("finetune-attempts").data)
    # Gradient accumulation follows data-parallel 1 (2 GPUs / TP 2): 8 / 4 and 8 / 2.
    assert [(r["kind"], r["micro_batch_size"], r["gradient_accumulation"]) for r in rows] == [
        ("gpu_oom", 4, 2), ("none", 2, 4)]
    assert rows[0]["evidence"].startswith("torch.OutOfMemoryError: CUDA out of memory.")
    assert len({r["job_id"] for r in rows}) == 2 and rows[1]["measured_peak_gib"] is None

    run = Path(result["run_dir"])
    assert result["train"]["resumed_from_step"] == 6 and result["train"]["final_step"] == 10
    retry_log = next((run / "finetune" / "attempt-2").glob("slurm-*.out")).read_text()
    assert "Resuming training from checkpoint:" in retry_log and "step=6-" in retry_log
    assert job_names(run, started) == ["convert", "evaluate", "finetune", "finetune"]
    sbatch = (run / "finetune" / "attempt-2" / "job.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=2" in sbatch and "#SBATCH --gpus-per-node=2" in sbatch

    metrics = result["metrics"]
    assert metrics["records"] > 0 and metrics["exact_match"] < metrics["exact_match_normalized"] == 1.0
    assert metrics["generation"]["repetition_penalty"] == 1.2  # 24.03's default, recorded
    manifest = json.loads((run / "manifest.json").read_text())
    keys = {o["key"] for o in manifest["objects"]}
    assert {f"adapter/{ADAPTER}", "base_nemo.json", "jobs/convert/attempt-1.sbatch",
            "jobs/finetune/attempt-2.sbatch", "evaluate/predictions.jsonl"} <= keys
    base = json.loads((run / "base_nemo.json").read_text())
    assert base["source"] == "converted" and base["store_run"].startswith("nemo-base-")
    stored = tmp_path / "store" / base["store_run"] / "base.nemo"
    assert stored.is_file() and stored.stat().st_size == base["size"]

    # A second run of the same model: the store's .nemo is restored, verified, and no job converts it.
    again = finetune(spec_path=str(spec), run_id="nemo-reuse",
                     overrides={"execution.slurm.env": {"NEMO_STANDIN_PROFILE": "24.03"}, "train.max_steps": 3,
                                "train.warmup_steps": 1})
    reused = json.loads((Path(again["run_dir"]) / "base_nemo.json").read_text())
    assert reused["source"] == "store" and reused["sha256"] == base["sha256"]
    assert not (Path(again["run_dir"]) / "convert" / "attempt-1").exists()
    assert job_names(Path(again["run_dir"]), started) == ["evaluate", "finetune"]
    assert again["train"]["final_step"] == 3 and again["train"]["resumed_from_step"] is None

    # Evaluation on a node that never saw the training job's files: the base and adapter .nemo
    # come back from the artifact store, verified against its manifests, and generation runs.
    from peftpipe.engines.nemo import stages as stages_nemo
    from peftpipe.artifacts import sha256_file
    from peftpipe.paths import RunPaths
    from peftpipe.validation import load_spec

    run_paths = RunPaths(Path(again["run_dir"]))
    loaded = load_spec(spec, {"execution.slurm.env": {"NEMO_STANDIN_PROFILE": "24.03"}, "train.max_steps": 3,
                              "train.warmup_steps": 1})
    adapter = run_paths.root / "finetune" / "nemo" / "checkpoints" / ADAPTER
    base_file = run_paths.root / "convert" / "base.nemo"
    adapter_sha = sha256_file(adapter)
    adapter.unlink()
    base_file.unlink()
    run_paths.predictions_file.unlink()
    lines: list[str] = []
    metrics = stages_nemo.nemo_evaluate_stage(loaded, run_paths, on_line=lines.append)
    assert sha256_file(adapter) == adapter_sha and sha256_file(base_file) == base["sha256"]
    assert any("adapter .nemo restored from nemo-reuse-nemo-adapter" in line for line in lines)
    assert metrics["records"] > 0 and run_paths.predictions_file.is_file()
