"""A sweep as a person starts and reads it: `prefect deployment run sweep/grid --watch` on the session's Prefect
stack (server, process worker, deployments), each child a finetune subflow run, then the sweep's comparison table
opened in headless chromium; the best child is promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftpipe.run_table import value_text
from tests.conftest import write_spec
from tests.prefect_stack import Stack, run_id_of
from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS, OUTPUT

pytestmark = pytest.mark.e2e


def test_sweep_deployment_compares_its_children_in_the_ui_and_promotes_the_best(prefect_stack: Stack,
                                                                                 hub_endpoint: str,
                                                                                 tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup_browser.sh (scripts/test.sh does)")
    from playwright.sync_api import expect, sync_playwright

    from peftpipe.artifacts import FileArtifactStore
    from peftpipe.promotion import read_promoted

    store = tmp_path / "store"
    spec = write_spec(tmp_path, {"model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf"),
                                 "workdir": str(tmp_path / "runs"), "artifacts.store": f"file://{store}",
                                 "train.max_steps": 2, "train.warmup_steps": 0, "train.checkpoint_every": 2,
                                 "evaluation.max_records": 4, "evaluation.baseline": False,
                                 "evaluation.select_metric": "loss"})
    result = prefect_stack.prefect("deployment", "run", "sweep/grid", "--param", f"spec_path={spec}",
                                   "--param", 'grid={"train.learning_rate": [0.001, 0.01]}',
                                   "--param", "sweep_id=lr-sweep", "--param", "promote_best=true", "--watch")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    flow_run_id = run_id_of(output)
    flow_run = prefect_stack.flow_run(flow_run_id)
    assert (flow_run["name"], flow_run["state_name"]) == ("lr-sweep", "Completed"), output

    children = {"lr-sweep-1": 0.001, "lr-sweep-2": 0.01}
    # Each child its own finetune flow run, a subflow of the sweep (its own page in the UI).
    runs = prefect_stack.api("POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": list(children)}}})
    assert sorted((run["name"], run["state_name"]) for run in runs) == [("lr-sweep-1", "Completed"),
                                                                        ("lr-sweep-2", "Completed")], \
        "\n\n".join(f"{run['name']}:\n{prefect_stack.logs(run['id'])}" for run in runs)
    assert all(run["parent_task_run_id"] for run in runs)
    manifests = {run_id: json.loads((store / run_id / "manifest.json").read_text()) for run_id in children}
    for run_id, learning_rate in children.items():  # each child trained with its own value
        assert manifests[run_id]["spec"]["train"]["learning_rate"] == learning_rate
    losses = {run_id: manifest["metrics"]["loss"] for run_id, manifest in manifests.items()}
    best = min(losses, key=losses.get)
    assert read_promoted(FileArtifactStore(store), "tiny-squad-lora")["run_id"] == best

    table = prefect_stack.artifacts(flow_run_id)["sweep-tiny-squad-lora"]
    rows = {row["key"]: row for row in json.loads(table["data"])}
    assert rows["train.learning_rate"]["lr-sweep-1"] == "0.001" and rows["train.learning_rate"]["differs"] == "*"
    assert rows["promoted"][best] == "yes"
    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{prefect_stack.ui_url}/v2/artifacts/artifact/{table['id']}")
            # Both children as columns, the swept key and each child's own test metrics as cells.
            for text in ("lr-sweep-1", "lr-sweep-2", "train.learning_rate", "0.001", "0.01", "loss", "f1",
                         "lr-sweep", *(value_text(loss) for loss in losses.values())):
                expect(page.get_by_text(text, exact=True).first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(OUTPUT / "ui-sweep-comparison.png"), full_page=True)
        finally:
            browser.close()
