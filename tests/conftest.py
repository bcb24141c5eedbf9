"""Shared fixtures: the tiny model, a loopback Hub mirror serving it, spec writing, S3 (SeaweedFS)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.prefect_stack import own_prefect_server, prefect_stack, slurm_deployment_run  # noqa: F401 - fixtures
from tests.s3_fixtures import own_s3_server, s3_server  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = REPO / "examples" / "tiny" / "spec.yaml"
EXAMPLE_DATA = REPO / "examples" / "tiny" / "squad_tiny.json"
TINY_REPO_ID = "peftpipe/tiny-llama"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mirror directory holding the tiny model, built once per test session."""
    from peftpipe.tiny_model import build_tiny_llama, corpus_from_files

    root = tmp_path_factory.mktemp("hub")
    build_tiny_llama(root / TINY_REPO_ID, corpus_from_files([EXAMPLE_DATA]))
    return root


@contextmanager
def serve_mirror(mirror) -> Iterator[str]:  # noqa: ANN001 - a peftpipe.hub.mirror.MirrorRoot
    """Serve ``mirror`` on a free loopback port until the block ends; yields the endpoint URL."""
    from peftpipe.hub.mirror import make_server

    server = make_server(mirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def hub_endpoint(hub_root: Path) -> Iterator[str]:
    """A real Hub-compatible HTTP server on loopback serving ``hub_root``; it takes pushes (peftpipe export --push)."""
    from peftpipe.hub.mirror import MirrorRoot

    with serve_mirror(MirrorRoot(hub_root, writable=True)) as endpoint:
        yield endpoint


def write_spec(directory: Path, changes: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Copy the example spec and its data into ``directory`` with dotted-key changes applied."""
    raw = yaml.safe_load(EXAMPLE_SPEC.read_text())
    for dotted, value in (changes or {}).items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    for dotted in drop:
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        del node[leaf]
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE_DATA, directory / EXAMPLE_DATA.name)
    spec = directory / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    return spec


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect API for the whole session (a nested harness would stop the shared one)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The one-node Slurm cluster of scripts/start_slurm.sh (started here if the test command did not)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "start_slurm.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"the test cluster did not start:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests of the real Prefect stack last and together: its server and worker then share the
    2 CI cores with nothing else, and the other tests never run beside them."""
    items.sort(key=lambda item: "prefect_stack" in getattr(item, "fixturenames", ()))
