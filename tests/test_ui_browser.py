"""The flow run's page in the Prefect UI, as a person sees it: headless Debian chromium via Playwright."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prefect_stack import DeploymentRun, Stack

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

OUTPUT = Path(__file__).resolve().parents[1] / "test-output"
CHROMIUM = "/usr/bin/chromium"
# No network beyond loopback, no updates, no first-run UI: the page must render from the local server alone.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STAGES = ("fetch-model", "prepare-data", "finetune-attempt1-mbs4", "evaluate", "publish")
KEYS = ("finetune-job-script", "evaluate-job-script", "finetune-attempts", "eval-metrics", "training-loss",
        "run-artifacts", "base-vs-adapter")


def test_flow_run_page_shows_stage_task_runs_and_artifacts(slurm_deployment_run: DeploymentRun,
                                                           prefect_stack: Stack) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup_browser.sh (scripts/test.sh does)")
    from playwright.sync_api import expect, sync_playwright

    assert slurm_deployment_run.returncode == 0, slurm_deployment_run.output
    page_url = f"{prefect_stack.ui_url}/v2/runs/flow-run/{slurm_deployment_run.flow_run_id}"
    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{page_url}?tab=TaskRuns")
            for stage in STAGES:
                expect(page.get_by_text(stage, exact=True).first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(OUTPUT / "ui-flow-run-task-runs.png"), full_page=True)
            page.goto(f"{page_url}?tab=Artifacts")
            for key in KEYS:
                expect(page.get_by_text(key, exact=True).first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(OUTPUT / "ui-flow-run-artifacts.png"), full_page=True)
        finally:
            browser.close()
