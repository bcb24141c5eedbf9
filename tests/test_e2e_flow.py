"""The finetune flow end to end through Prefect, as a user would check a finished run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import TINY_REPO_ID, write_spec

pytestmark = pytest.mark.e2e

STAGES = ("fetch-model", "prepare-data", "finetune", "evaluate", "publish")


def test_finetune_flow_end_to_end(tmp_path: Path, hub_endpoint: str, prefect_api) -> None:
    from flows.finetune import finetune
    from flows.report import stage_rows

    spec = write_spec(tmp_path, {
        "model.endpoint": hub_endpoint,
        "model.cache_dir": str(tmp_path / "hf-cache"),
        "workdir": str(tmp_path / "runs"),
        "artifacts.store": f"file://{tmp_path / 'store'}",
        "train.max_steps": 12,
        "train.checkpoint_every": 5,
    })
    state = finetune(spec_path=str(spec), run_id="e2e-run", return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    summary = state.result()

    rows = stage_rows(state.state_details.flow_run_id)
    assert [row.name.split("-attempt")[0] for row in rows] == list(STAGES)
    assert all(row.state == "Completed" for row in rows)
    assert rows[2].name == "finetune-attempt1-mbs4"

    run_dir = Path(summary["run_dir"])
    test_records = (run_dir / "data" / "test.jsonl").read_text().splitlines()
    predictions = (run_dir / "evaluate" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == len(test_records) > 0
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    for key in ("exact_match", "exact_match_normalized", "f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["loss"] > 0
    # The spec's first run scores the base model on the same records; the adapter is visibly applied.
    assert metrics["baseline"]["records"] == metrics["records"]
    assert metrics["delta"]["loss"] == pytest.approx(metrics["loss"] - metrics["baseline"]["loss"])
    assert metrics["predictions_changed_by_adapter"] > 0 or metrics["delta"]["loss"] != 0
    assert summary["train"]["final_step"] == 12

    store = tmp_path / "store" / "e2e-run"
    manifest = json.loads((store / "manifest.json").read_text())
    keys = {obj["key"] for obj in manifest["objects"]}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "evaluate/predictions.jsonl",
            "evaluate/metrics.json", "finetune/metrics.jsonl", "logs/finetune/attempt-1.log"} <= keys
    for obj in manifest["objects"]:
        data = (store / obj["key"]).read_bytes()
        assert len(data) == obj["size"]
        assert hashlib.sha256(data).hexdigest() == obj["sha256"]
    assert manifest["base_model"]["repo_id"] == TINY_REPO_ID
    assert len(manifest["base_model"]["commit_sha"]) == 40
    assert manifest["dataset"]["fingerprint"] == summary["data"]["fingerprint"]
    # The published adapter names its base by Hub repo id and pinned commit, not this machine's cache path.
    adapter_config = json.loads((store / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == TINY_REPO_ID
    assert adapter_config["revision"] == manifest["base_model"]["commit_sha"]
    # And it records what it trained on, record by record, for a later overlap check.
    trained = (store / "data" / "train_fingerprints.txt").read_text().split()
    assert len(trained) == len((run_dir / "data" / "train.jsonl").read_text().splitlines()) > 0


def test_invalid_override_fails_the_flow_before_any_stage(tmp_path: Path, prefect_api) -> None:
    from flows.finetune import finetune
    from flows.report import stage_rows

    spec = write_spec(tmp_path, {"workdir": str(tmp_path / "runs")})
    state = finetune(spec_path=str(spec), run_id="bad-run", overrides={"train.micro_batch_size": 3},
                     return_state=True)
    assert state.is_failed()
    assert "train.global_batch_size: 8 is not divisible by micro_batch_size 3" in str(state.result(raise_on_failure=False))
    assert stage_rows(state.state_details.flow_run_id) == []
    assert not (tmp_path / "runs").exists()
