"""The training chart, the step progress and the runs table on the run's page, seen in headless chromium while
training runs and after, with a real Prefect server (the session's stack)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_DATA
from tests.prefect_stack import Stack
from tests.test_ui_browser import CHROMIUM, CHROMIUM_ARGS, OUTPUT

pytestmark = pytest.mark.e2e


def artifact_rows(stack: Stack, flow_run_id: str) -> dict[str, list[dict]]:
    rows = stack.api("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row.get("key") or "", []).append(row)
    return by_key


def test_chart_updates_while_training_and_is_published(prefect_stack: Stack, hub_root: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup_browser.sh (scripts/test.sh does)")
    from playwright.sync_api import expect, sync_playwright

    shutil.copy(EXAMPLE_DATA, tmp_path / "squad.json")
    spec = tmp_path / "spec.yaml"
    python = [sys.executable, "-m", "peftpipe"]
    subprocess.run([*python, "init", str(spec), "--model", str(hub_root / "peftpipe" / "tiny-llama"), "--format",
                    "squad", "--data", "squad.json", "--name", "chart-demo"], check=True, capture_output=True,
                   cwd=tmp_path)
    # 400 steps (about 15 s of training on a free core, 0.04 s a step): the watcher polls every 2 s and the
    # chart is redrawn every 20 steps, so it is seen mid-training. At 40 steps training took under 2 s and
    # on a loaded CI machine the run could end before the first mid-training redraw was observed.
    run = subprocess.Popen([*python, "run", str(spec), "--run-id", "chart-demo-1", "--set", "train.max_steps=400",
                            "--set", "train.checkpoint_every=100", "--set", "train.learning_rate=0.01",
                            "--set", "evaluation.max_records=4"],
                           cwd=tmp_path, env=prefect_stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    OUTPUT.mkdir(exist_ok=True)
    try:
        deadline = time.monotonic() + 300
        flow_run_id = None
        while flow_run_id is None:
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()[0]
            found = prefect_stack.api("POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": ["chart-demo-1"]}}})
            flow_run_id = found[0]["id"] if found else None
            time.sleep(1)
        page_url = f"{prefect_stack.ui_url}/v2/runs/flow-run/{flow_run_id}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                # During training: a drawn chart, and a progress artifact between 0 and 100 %.
                while True:
                    assert time.monotonic() < deadline and run.poll() is None, run.communicate()[0]
                    artifacts = artifact_rows(prefect_stack, flow_run_id)
                    chart = (artifacts.get("training-chart") or [{}])[0]
                    progress = (artifacts.get("training-progress") or [{}])[0]
                    if "data:image/png;base64," in str(chart.get("data")) and 0 < (progress.get("data") or 0) < 100:
                        break
                    time.sleep(0.3)
                page.goto(f"{prefect_stack.ui_url}/v2/artifacts/artifact/{chart['id']}")
                expect(page.get_by_alt_text("training and validation loss, learning rate")).to_be_visible(
                    timeout=60_000)
                page.screenshot(path=str(OUTPUT / "ui-training-chart-during.png"), full_page=True)
                during_step = int(str(chart["data"]).split("step ", 1)[1].split(" ", 1)[0])
                assert during_step < 400

                output, _ = run.communicate(timeout=400)
                assert run.returncode == 0, output
                artifacts = artifact_rows(prefect_stack, flow_run_id)
                for key in ("training-chart", "training-progress", "finetune-attempts", "runs-chart-demo"):
                    assert len(artifacts.get(key, [])) == 1, f"{key}: {len(artifacts.get(key, []))} cards"
                chart = artifacts["training-chart"][0]
                assert artifacts["training-progress"][0]["data"] == 100.0
                assert "step 400 of 400" in chart["data"]
                page.goto(f"{prefect_stack.ui_url}/v2/artifacts/artifact/{chart['id']}")
                image = page.get_by_alt_text("training and validation loss, learning rate")
                expect(image).to_be_visible(timeout=60_000)
                assert image.evaluate("img => img.naturalWidth") == 800  # the PNG decoded in the browser
                page.screenshot(path=str(OUTPUT / "ui-training-chart-after.png"), full_page=True)
                page.goto(f"{prefect_stack.ui_url}/v2/artifacts/artifact/{artifacts['runs-chart-demo'][0]['id']}")
                expect(page.get_by_text("chart-demo-1").first).to_be_visible(timeout=60_000)
                page.screenshot(path=str(OUTPUT / "ui-runs-table.png"), full_page=True)
                page.goto(f"{page_url}?tab=Artifacts")
                expect(page.get_by_text("training-chart", exact=True).first).to_be_visible(timeout=60_000)
                page.screenshot(path=str(OUTPUT / "ui-flow-run-artifacts-chart.png"), full_page=True)
            finally:
                browser.close()
    finally:
        if run.poll() is None:
            run.kill()
    published = tmp_path / "runs" / "artifacts" / "chart-demo-1" / "finetune" / "training_chart.png"
    assert published.read_bytes()[:8] == base64.b64decode("iVBORw0KGgo=")  # the PNG is stored with the run
