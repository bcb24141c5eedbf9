"""A private slurmdbd on the shared test cluster, so that a test can stop accounting for itself alone.

The second slurmdbd reads the same MariaDB database as the cluster's own, on its own port; the
test's Slurm commands reach it through a copy of slurm.conf (``SLURM_CONF``) that names that
port. Stopping it is a real accounting outage for the test's ``sacct`` (connection refused, as
when the cluster's slurmdbd is down) while every other test on the cluster keeps its accounting.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SLURM_ETC = Path("/etc/slurm")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _with_settings(text: str, settings: dict[str, str]) -> str:
    for key, value in settings.items():
        text = re.sub(rf"(?m)^{key}=.*\n?", "", text)
        text += f"\n{key}={value}\n"
    return text


@dataclass
class PrivateAccounting:
    conf_dir: Path
    slurm_conf: Path
    no_controller_conf: Path  # also names a controller port nobody listens on
    process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> None:
        env = {**os.environ, "SLURM_CONF": str(self.slurm_conf)}
        log = (self.conf_dir / "slurmdbd.out").open("a")
        self.process = subprocess.Popen(["slurmdbd", "-D"], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            probe = subprocess.run(["sacct", "-n", "-X", "-j", "1"], env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                return
            assert self.process.poll() is None, (self.conf_dir / "slurmdbd.out").read_text()
            time.sleep(0.3)
        raise AssertionError("the private slurmdbd did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_accounting(tmp_path_factory: pytest.TempPathFactory, slurm_cluster: str,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateAccounting]:
    """This test's Slurm commands use a slurmdbd of their own (started here, stopped at the end)."""
    if shutil.which("slurmdbd") is None or not (SLURM_ETC / "slurmdbd.conf").exists():
        pytest.fail("slurmdbd is not installed; scripts/start_slurm.sh installs it")
    conf_dir = tmp_path_factory.mktemp("accounting")
    for item in SLURM_ETC.iterdir():
        if item.is_file():
            shutil.copy(item, conf_dir / item.name)
    dbd_port = free_port()
    dbd = _with_settings((SLURM_ETC / "slurmdbd.conf").read_text(),
                         {"DbdPort": str(dbd_port), "PidFile": str(conf_dir / "slurmdbd.pid"),
                          "LogFile": str(conf_dir / "slurmdbd.log")})
    (conf_dir / "slurmdbd.conf").write_text(dbd)
    (conf_dir / "slurmdbd.conf").chmod(0o600)
    slurm = _with_settings((SLURM_ETC / "slurm.conf").read_text(), {"AccountingStoragePort": str(dbd_port)})
    (conf_dir / "slurm.conf").write_text(slurm)
    dead = conf_dir / "no-controller"
    dead.mkdir()
    for item in conf_dir.iterdir():
        if item.is_file():
            shutil.copy(item, dead / item.name)
    (dead / "slurm.conf").write_text(_with_settings(slurm, {"SlurmctldPort": str(free_port()),
                                                            "MessageTimeout": "1", "TCPTimeout": "1"}))
    accounting = PrivateAccounting(conf_dir, conf_dir / "slurm.conf", dead / "slurm.conf")
    accounting.start()
    monkeypatch.setenv("SLURM_CONF", str(accounting.slurm_conf))
    try:
        yield accounting
    finally:
        accounting.stop()
