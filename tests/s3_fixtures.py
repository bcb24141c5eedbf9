"""A real S3 server for the tests: SeaweedFS started through ``scripts/start_s3.sh`` on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START_S3 = REPO / "scripts" / "start_s3.sh"
BUCKET = "peftpipe"


@dataclass
class SeaweedS3:
    """One ``weed server -s3`` whose process the tests control (stop, restart).

    weed lingers some 15 s after SIGTERM although its log says it has stopped, so a stop that
    takes longer than ``timeout`` ends with SIGKILL.
    """

    data_dir: Path

    def start(self) -> None:
        env = {**os.environ, "S3_PORT": "auto", "S3_BUCKET": BUCKET}
        done = subprocess.run([str(START_S3), str(self.data_dir)], env=env, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{START_S3} failed ({done.returncode}): {done.stderr.strip()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 3.0) -> None:
        pid = int((self.data_dir / "weed.pid").read_text())
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    @property
    def env(self) -> dict[str, str]:
        """AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION."""
        lines = (self.data_dir / "s3.env").read_text().split()
        return dict(line.split("=", 1) for line in lines)

    @property
    def endpoint(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]

    def session(self, secret: str | None = None):  # noqa: ANN201 - a boto3 Session
        import boto3

        env = self.env
        return boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                     aws_secret_access_key=secret or env["AWS_SECRET_ACCESS_KEY"],
                                     region_name=env["AWS_DEFAULT_REGION"])


def _alive(pid: int) -> bool:
    """Running, not a zombie: the server is not our child, and its reaper may take its time."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """The session's S3 server, on free loopback ports, with a fresh data directory."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_s3_server(tmp_path: Path) -> Iterator[SeaweedS3]:
    """A server for one test that stops and restarts it (the session's server must stay up)."""
    server = SeaweedS3(tmp_path / "seaweedfs")
    server.start()
    yield server
    server.stop(signal.SIGKILL)
