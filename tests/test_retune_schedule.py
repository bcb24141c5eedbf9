"""The retune flow on an interval schedule against the real server and worker.

It runs the local backend (the Slurm path of the same finetune flow is covered by
test_deployments.py), so that three scheduled runs fit in about two minutes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from peftpipe.stores import open_store
from peftpipe.promotion import read_promoted
from tests.conftest import write_spec
from tests.prefect_stack import Stack

pytestmark = pytest.mark.e2e

DEPLOYMENT = "retune/every-15s"


def completed_runs(stack: Stack, deployment_id: str) -> list[dict[str, Any]]:
    return stack.api("POST", "/flow_runs/filter", {
        "flow_runs": {"deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": ["COMPLETED"]}}},
        "sort": "START_TIME_ASC"})


def wait_for_completed(stack: Stack, deployment_id: str, count: int, after: float = 0.0,
                       timeout_s: float = 300) -> list[dict[str, Any]]:
    """The first ``count`` completed runs that started after the epoch time ``after``."""
    from datetime import datetime

    deadline = time.monotonic() + timeout_s
    while True:
        runs = [run for run in completed_runs(stack, deployment_id)
                if datetime.fromisoformat(run["start_time"]).timestamp() > after]
        if len(runs) >= count:
            return runs[:count]
        failed = stack.api("POST", "/flow_runs/filter", {"flow_runs": {
            "deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": ["FAILED", "CRASHED"]}}}})
        assert not failed, stack.logs(failed[0]["id"])
        assert time.monotonic() < deadline, f"{len(runs)} of {count} scheduled runs completed"
        time.sleep(2)


def wait_for_failed(stack: Stack, deployment_id: str, after: float, timeout_s: float = 120) -> dict[str, Any]:
    """The first failed run that started after the epoch time ``after``."""
    from datetime import datetime

    deadline = time.monotonic() + timeout_s
    while True:
        failed = [run for run in stack.api("POST", "/flow_runs/filter", {"flow_runs": {
            "deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": ["FAILED"]}}}})
            if datetime.fromisoformat(run["start_time"]).timestamp() > after]
        if failed:
            return failed[0]
        assert time.monotonic() < deadline, "no scheduled run failed on the overlapping test file"
        time.sleep(2)


def split_inputs(path: Path) -> set[str]:
    return {json.loads(line)["input"] for line in path.read_text().splitlines() if line.strip()}


def table(stack: Stack, flow_run_id: str, key: str) -> list[dict[str, Any]]:
    data = stack.artifacts(flow_run_id)[key]["data"]
    return json.loads(data) if isinstance(data, str) else data


def decision(stack: Stack, flow_run_id: str) -> str:
    return stack.artifacts(flow_run_id)["retune-decision"]["data"]


def test_scheduled_retune_skips_unchanged_data_and_promotes_only_when_better(
        prefect_stack: Stack, hub_endpoint: str, tmp_path: Path) -> None:
    changes = {"model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
               "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{tmp_path / 'store'}",
               "train.max_steps": 6, "train.warmup_steps": 1, "train.checkpoint_every": 3}
    spec = write_spec(tmp_path, changes)
    deployed = prefect_stack.prefect(
        "--no-prompt", "deploy", "flows/retune.py:retune", "--name", "every-15s", "--pool", "peftpipe-process",
        "--interval", "15", "--concurrency-limit", "1",
        "--params", json.dumps({"spec_path": str(spec)}))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deployment_id = prefect_stack.api("GET", f"/deployments/name/{DEPLOYMENT}")["id"]
    try:
        first, second = wait_for_completed(prefect_stack, deployment_id, 2)
        assert decision(prefect_stack, first["id"]).startswith("tuned: promoted")
        assert decision(prefect_stack, second["id"]).startswith("skipped: the training data")
        store = open_store(f"file://{tmp_path / 'store'}")
        promoted = read_promoted(store, "tiny-squad-lora")
        assert promoted is not None and promoted["metric"] == "f1"

        # The dataset grows: every question again, reworded, is appended (new records, same file).
        data = tmp_path / "squad_tiny.json"
        squad = json.loads(data.read_text())
        for article in squad["data"]:
            for paragraph in article["paragraphs"]:
                paragraph["qas"] += [{**qa, "id": f"{qa['id']}-again", "question": f"Once more: {qa['question']}"}
                                     for qa in paragraph["qas"]]
        data.write_text(json.dumps(squad))
        changed = time.time()

        (third,) = wait_for_completed(prefect_stack, deployment_id, 1, after=changed)
        assert decision(prefect_stack, third["id"]).startswith("tuned: ")
        comparison = prefect_stack.artifacts(third["id"])["retune-comparison"]["data"]
        rows = json.loads(comparison) if isinstance(comparison, str) else comparison
        assert [row["adapter"] for row in rows] == ["candidate (new)", "promoted (before)", "base model (no adapter)"]
        assert rows[1]["run"] == promoted["run_id"]
        winner = next(row["run"] for row in rows if row["promoted after"] == "yes")
        assert read_promoted(store, "tiny-squad-lora")["run_id"] == winner
        # No record the promoted adapter trained on is in the new test split both were scored on.
        old_train = split_inputs(tmp_path / "runs" / promoted["run_id"] / "data" / "train.jsonl")
        new_test = split_inputs(tmp_path / "runs" / rows[0]["run"] / "data" / "test.jsonl")
        assert new_test and not old_train & new_test
        overlap = table(prefect_stack, third["id"], "retune-test-overlap")
        assert [row["trained on"] for row in overlap] == [0, 0]

        # A test file that holds two of the promoted adapter's training records is reported and refused.
        incumbent = read_promoted(store, "tiny-squad-lora")["run_id"]
        trained = (tmp_path / "runs" / incumbent / "data" / "train.jsonl").read_text().splitlines()[:2]
        (tmp_path / "leaky_test.jsonl").write_text("\n".join(trained) + "\n")
        (tmp_path / "more.jsonl").write_text("".join(
            json.dumps({"input": f"Context: count {n}\nQuestion: what comes next?", "output": str(n + 1)}) + "\n"
            for n in range(20)))
        write_spec(tmp_path, {**changes, "dataset.format": "jsonl", "dataset.train": str(tmp_path / "more.jsonl"),
                              "dataset.test": str(tmp_path / "leaky_test.jsonl")},
                   drop=("dataset.path", "dataset.split", "dataset.input_template"))
        refused = wait_for_failed(prefect_stack, deployment_id, after=time.time())
        overlap = table(prefect_stack, refused["id"], "retune-test-overlap")
        assert [row["trained on"] for row in overlap] == [0, 2]
        assert overlap[1]["adapter"] == f"promoted (before) {incumbent}" and overlap[1]["first lines"] == "1, 2"
        assert decision(prefect_stack, refused["id"]).startswith("refused: test overlap")
        assert "evaluation.test_overlap: warn" in prefect_stack.logs(refused["id"])
        assert read_promoted(store, "tiny-squad-lora")["run_id"] == incumbent
    finally:
        prefect_stack.prefect("deployment", "delete", DEPLOYMENT)
