"""Sweeps: a grid over spec keys becomes child finetune runs, compared in one table, the best one promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftpipe.sweep import SweepError, best_child, expand_grid
from tests.conftest import write_spec


def test_a_grid_expands_first_key_slowest_and_bad_grids_name_the_key() -> None:
    points = expand_grid({"train.learning_rate": [1e-4, 3e-4], "peft.lora.r": [8, 16]})
    assert points == [{"train.learning_rate": 1e-4, "peft.lora.r": 8}, {"train.learning_rate": 1e-4, "peft.lora.r": 16},
                      {"train.learning_rate": 3e-4, "peft.lora.r": 8}, {"train.learning_rate": 3e-4, "peft.lora.r": 16}]
    with pytest.raises(SweepError, match="train.learning_rte: not a spec key"):
        expand_grid({"train.learning_rte": [1e-4]})
    with pytest.raises(SweepError, match="train.max_steps: give a non-empty list"):
        expand_grid({"train.max_steps": 100})
    results = [{"run_id": "a", "metrics": {"f1": 0.2, "loss": 2.0}}, {"run_id": "b", "metrics": {"f1": 0.5, "loss": 2.5}}]
    assert best_child(results, "f1")["run_id"] == "b" and best_child(results, "loss")["run_id"] == "a"


@pytest.mark.e2e
def test_sweep_runs_each_point_compares_and_promotes_the_best(tmp_path: Path, hub_endpoint: str, prefect_api) -> None:
    from prefect.artifacts import Artifact

    from flows.sweep import sweep
    from peftpipe.artifacts import FileArtifactStore
    from peftpipe.promotion import read_promoted

    store = tmp_path / "store"
    spec = write_spec(tmp_path, {"model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf"),
                                 "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{store}",
                                 "train.max_steps": 2, "train.warmup_steps": 0, "train.checkpoint_every": 2,
                                 "evaluation.max_records": 4,
                                 "evaluation.select_metric": "loss"})
    result = sweep(grid={"train.learning_rate": [0.001, 0.01]}, spec_path=str(spec), sweep_id="lr-sweep",
                   promote_best=True)
    children = result["children"]
    assert [(c["run_id"], c["point"], c["state"]) for c in children] == [
        ("lr-sweep-1", {"train.learning_rate": 0.001}, "Completed"),
        ("lr-sweep-2", {"train.learning_rate": 0.01}, "Completed")]
    for child in children:  # each child trained with its own value
        manifest = json.loads((store / child["run_id"] / "manifest.json").read_text())
        assert manifest["spec"]["train"]["learning_rate"] == child["point"]["train.learning_rate"]
    losses = {c["run_id"]: c["metrics"]["loss"] for c in children}
    assert result["best"] == min(losses, key=losses.get)
    assert read_promoted(FileArtifactStore(store), "tiny-squad-lora")["run_id"] == result["best"]
    rows = {row["key"]: row for row in json.loads(Artifact.get("sweep-tiny-squad-lora").data)}
    assert rows["train.learning_rate"]["lr-sweep-1"] == "0.001" and rows["train.learning_rate"]["differs"] == "*"
    assert rows["promoted"][result["best"]] == "yes"
