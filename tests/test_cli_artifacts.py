"""`peftpipe artifacts ls/get` as a user runs them, on another "node" that only has the store's address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftpipe.artifacts import publish_directory
from peftpipe.stores import open_store
from peftpipe.artifacts_s3 import S3Access
from peftpipe.spec import S3StoreSpec
from tests.s3_fixtures import BUCKET, SeaweedS3


def peftpipe(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftpipe", "artifacts", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", **env}, cwd=cwd, timeout=120)


@pytest.fixture
def published_run(s3_server: SeaweedS3, tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    files = {"adapter/adapter_model.safetensors": out / "adapter" / "adapter_model.safetensors",
             "adapter/adapter_config.json": out / "adapter" / "adapter_config.json",
             "evaluate/metrics.json": out / "metrics.json"}
    files["adapter/adapter_model.safetensors"].write_bytes(os.urandom(3 << 20))
    files["adapter/adapter_config.json"].write_text('{"r": 16}\n')
    files["evaluate/metrics.json"].write_text('{"f1": 0.5}\n')
    access = S3Access(session=s3_server.session(), endpoint_url=s3_server.endpoint)
    store = open_store(f"s3://{BUCKET}/cli", S3StoreSpec(addressing_style="path"), access)
    publish_directory(store, "run-7", files, {"base_model": {"repo_id": "peftpipe/tiny-llama", "commit_sha": "c" * 40}})
    store.put_file("half-done", "adapter/adapter_config.json", files["adapter/adapter_config.json"])
    return files


def test_ls_and_get_restore_a_run_elsewhere(s3_server: SeaweedS3, published_run: dict[str, Path],
                                            tmp_path: Path) -> None:
    elsewhere = tmp_path / "other-node"
    elsewhere.mkdir()
    env = {**s3_server.env, "PEFTPIPE_ARTIFACT_STORE": f"s3://{BUCKET}/cli"}

    runs = peftpipe("ls", env=env, cwd=elsewhere)
    assert runs.returncode == 0, runs.stderr
    assert "run-7" in runs.stdout and "complete" in runs.stdout
    assert "half-done" in runs.stdout and "incomplete (no manifest)" in runs.stdout

    listing = peftpipe("ls", "run-7", env=env, cwd=elsewhere)
    assert listing.returncode == 0, listing.stderr
    assert "base model peftpipe/tiny-llama @ " + "c" * 40 in listing.stdout
    for key, path in published_run.items():
        assert key in listing.stdout
        assert f"{path.stat().st_size:,}" in listing.stdout

    got = peftpipe("get", "run-7", "adapter", "restored-adapter", env=env, cwd=elsewhere)
    assert got.returncode == 0, got.stderr
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        restored = elsewhere / "restored-adapter" / name
        assert restored.read_bytes() == published_run[f"adapter/{name}"].read_bytes()
    one = peftpipe("get", "run-7", "evaluate/metrics.json", ".", env=env, cwd=elsewhere)
    assert one.returncode == 0, one.stderr
    assert json.loads((elsewhere / "metrics.json").read_text()) == {"f1": 0.5}


def test_incomplete_runs_unknown_names_and_bad_keys_fail_with_a_reason(s3_server: SeaweedS3,
                                                                       published_run: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    env = {**s3_server.env, "PEFTPIPE_ARTIFACT_STORE": f"s3://{BUCKET}/cli"}
    half = peftpipe("get", "half-done", "adapter", "out", env=env, cwd=tmp_path)
    assert half.returncode == 1
    assert "run 'half-done' has no manifest.json" in half.stderr and not (tmp_path / "out").exists()

    unknown = peftpipe("get", "run-7", "adapters", "out", env=env, cwd=tmp_path)
    assert unknown.returncode == 1
    assert "run 'run-7' has no object or prefix 'adapters'; it has: adapter/adapter_config.json" in unknown.stderr

    wrong = "not-the-secret-key-42"
    denied = peftpipe("ls", "run-7", env={**env, "AWS_SECRET_ACCESS_KEY": wrong}, cwd=tmp_path)
    assert denied.returncode == 1
    assert "refused the credentials from the AWS environment" in denied.stderr
    assert "SignatureDoesNotMatch" in denied.stderr
    assert wrong not in denied.stderr + denied.stdout

    nowhere = peftpipe("ls", env={k: v for k, v in env.items() if k != "PEFTPIPE_ARTIFACT_STORE"}, cwd=tmp_path)
    assert nowhere.returncode == 2 and "no artifact store: pass --store URL or --spec SPEC" in nowhere.stderr


def test_the_store_can_come_from_a_spec(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    source = tmp_path / "metrics.json"
    source.write_text('{"f1": 1.0}\n')
    publish_directory(open_store(f"file://{store_dir}"), "run-1", {"evaluate/metrics.json": source}, {})
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: x\nartifacts:\n  store: file://{store_dir}\n")
    got = peftpipe("get", "run-1", "evaluate/metrics.json", "m.json", "--spec", str(spec), env={}, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "m.json").read_text() == source.read_text()
