"""A real Prefect server, process worker and deployments, started by scripts/start_prefect_stack.sh.

One stack per test session (about 45 s on 2 cores), in its own state directory and on a free
port, so it never meets the stack a person runs or the session's test harness. The CLI calls of
a test go to it through ``stack.env``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(REPO / ".venv" / "bin" / "prefect")


@dataclass(frozen=True)
class Stack:
    api_url: str
    directory: Path
    env: dict[str, str]

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def prefect(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """The prefect CLI against this stack, as a person runs it."""
        return subprocess.run([PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.api_url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/flow_runs/{flow_run_id}")

    def logs(self, flow_run_id: str) -> str:
        rows = self.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        return "\n".join(row["message"] for row in rows)

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        rows = self.api("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {row["key"]: row for row in rows if row.get("key")}

    def wait_for_state(self, flow_run_id: str, final: set[str], timeout_s: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.flow_run(flow_run_id)
            if run["state_type"] in final:
                return run
            assert time.monotonic() < deadline, f"flow run {flow_run_id} still {run['state_name']}"
            time.sleep(1)


def run_id_of(cli_output: str) -> str:
    """The flow run id printed by `prefect deployment run` ("UUID: ...")."""
    for line in cli_output.splitlines():
        if "UUID:" in line:
            return line.split("UUID:", 1)[1].strip()
    raise AssertionError(f"no flow run id in:\n{cli_output}")


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("prefect-stack")
    env = {**os.environ, "STACK_DIR": str(directory), "PREFECT_PORT": "auto",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200",
           # Faster than a person needs, so tests do not wait: the scheduler and the worker poll often.
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_HOME"):
        env.pop(name, None)
    if os.environ.get("PEFTPIPE_TEST_PREFECT_DB") == "postgres":
        args = ["--postgres"]
        env["PREFECT_PG_DATABASE"] = f"prefect_test_{os.getpid()}"
    else:
        args = []
    started = subprocess.run([str(REPO / "scripts" / "start_prefect_stack.sh"), *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        print(started.stdout)
        api_url = (directory / "api_url").read_text().strip()
        yield Stack(api_url, directory, {**env, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(directory / "home")})
    finally:
        subprocess.run([str(REPO / "scripts" / "stop_prefect_stack.sh")], cwd=REPO, env=env, timeout=120)


SLURM = {"mem": "2G", "cpus_per_task": 1, "poll_max_interval_s": 2}


def slurm_spec(directory: Path, hub_endpoint: str, **changes: Any) -> Path:
    from tests.conftest import write_spec

    return write_spec(directory, {"model.endpoint": hub_endpoint, "model.cache_dir": str(directory / "hf-cache"),
                                  "workdir": str(directory / "runs"), "artifacts.store": f"file://{directory / 'store'}",
                                  "execution.backend": "slurm", "execution.slurm": SLURM, "train.max_steps": 20,
                                  "train.checkpoint_every": 5, **changes})


@dataclass(frozen=True)
class DeploymentRun:
    flow_run_id: str
    run_id: str
    returncode: int
    output: str
    wall_s: float
    spec: Path


@pytest.fixture(scope="session")
def slurm_deployment_run(prefect_stack: Stack, hub_endpoint: str, slurm_cluster: str,
                         tmp_path_factory: pytest.TempPathFactory) -> DeploymentRun:
    """`prefect deployment run 'finetune/tiny' --param micro_batch_size=4 --watch` on the Slurm backend."""
    spec = slurm_spec(tmp_path_factory.mktemp("deployment-run"), hub_endpoint)
    run_id = f"deploy-{os.getpid()}"
    started = time.monotonic()
    result = prefect_stack.prefect("deployment", "run", "finetune/tiny", "--param", f"spec_path={spec}",
                                   "--param", f"run_id={run_id}", "--param", "micro_batch_size=4", "--watch")
    output = result.stdout + result.stderr
    return DeploymentRun(run_id_of(output), run_id, result.returncode, output, time.monotonic() - started, spec)


@dataclass(frozen=True)
class OwnServer:
    """A Prefect server alone (`start_prefect_stack.sh --server-only`) on a fixed port, so a test can
    stop it and start it again at the same address, as an outage does to its clients."""

    scripts_env: dict[str, str]
    env: dict[str, str]  # for clients: PREFECT_API_URL and their own PREFECT_HOME

    @property
    def api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    def start(self) -> None:
        done = subprocess.run([str(REPO / "scripts" / "start_prefect_stack.sh"), "--server-only"], cwd=REPO,
                              env=self.scripts_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    def stop(self) -> None:
        subprocess.run([str(REPO / "scripts" / "stop_prefect_stack.sh")], cwd=REPO, env=self.scripts_env,
                       capture_output=True, timeout=120)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return Stack(self.api_url, Path(), self.env).api(method, path, body)

    def active_slots(self, limit: str) -> int:
        return self.api("GET", f"/v2/concurrency_limits/{limit}")["active_slots"]


@pytest.fixture(scope="session")
def own_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    """One restartable server for the session's outage tests (about 15 s to start); each test leaves it up."""
    import socket

    directory = tmp_path_factory.mktemp("own-prefect-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scripts_env = {**os.environ, "STACK_DIR": str(directory / "stack"), "PREFECT_PORT": str(port),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_HOME"):
        scripts_env.pop(name, None)
    server = OwnServer(scripts_env, {**scripts_env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                                     "PREFECT_HOME": str(directory / "client"), "COLUMNS": "200"})
    server.start()
    try:
        yield server
    finally:
        server.stop()
