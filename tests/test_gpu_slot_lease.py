"""A GPU-job slot held across a real Prefect server restart is freed when its holder ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.prefect_stack import REPO

HOLDER = """
import sys, time
from prefect.concurrency.sync import concurrency
with concurrency("peftpipe-test-gpu-jobs", occupy=1, lease_duration=60):
    print("holding", flush=True)
    while not __import__("os").path.exists(sys.argv[1]):
        time.sleep(0.2)
print("released", flush=True)
"""


def api(env: dict[str, str], method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(env["PREFECT_API_URL"] + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def active_slots(env: dict[str, str]) -> int:
    return api(env, "GET", "/v2/concurrency_limits/peftpipe-test-gpu-jobs")["active_slots"]


def test_slot_held_across_a_server_restart_is_released(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), "PREFECT_PORT": str(port),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_HOME"):
        env.pop(name, None)
    client_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(tmp_path / "client")}

    def start() -> None:
        done = subprocess.run([str(REPO / "scripts" / "start_prefect_stack.sh"), "--server-only"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    def stop() -> None:
        subprocess.run([str(REPO / "scripts" / "stop_prefect_stack.sh")], cwd=REPO, env=env, timeout=120)

    start()
    holder = None
    try:
        api(client_env, "POST", "/v2/concurrency_limits/", {"name": "peftpipe-test-gpu-jobs", "limit": 1})
        done_file = tmp_path / "job-finished"
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(done_file)], env=client_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert active_slots(client_env) == 1
        stop()  # the server goes down while the GPU job holds its slot
        start()
        assert active_slots(client_env) == 1, "the slot is still held by the running job"
        done_file.touch()  # the job ends; its holder leaves the slot
        output, _ = holder.communicate(timeout=120)
        assert "released" in output, output
        deadline = time.monotonic() + 30
        while active_slots(client_env) != 0:
            assert time.monotonic() < deadline, "the slot leaked: active_slots stays 1 with no job"
            time.sleep(1)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        stop()
