"""The S3 artifact store against a real SeaweedFS on loopback."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from peftpipe.artifacts import (
    MANIFEST, ArtifactStoreError, ChecksumMismatch, RunIncomplete, StoreUnavailable, publish_directory, restore,
)
from peftpipe.artifacts_s3 import S3Access, S3ArtifactStore
from peftpipe.spec import S3StoreSpec
from tests.s3_fixtures import BUCKET, SeaweedS3

MIB = 1 << 20
SMALL_PARTS = S3StoreSpec(addressing_style="path", part_size_mb=5, max_concurrency=2)


def store_for(server: SeaweedS3, prefix: str, settings: S3StoreSpec = SMALL_PARTS, secret: str | None = None,
              **kwargs) -> S3ArtifactStore:
    access = S3Access(session=server.session(secret), source="the test's keys", endpoint_url=server.endpoint)
    return S3ArtifactStore(BUCKET, prefix, settings, access, **kwargs)


def run_files(directory: Path, big_mib: int) -> dict[str, Path]:
    """Two small files that sort before one big file above the multipart threshold."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"base_model.json": directory / "base_model.json", "logs/train.log": directory / "train.log",
             "weights/adapter.safetensors": directory / "adapter.safetensors"}
    files["base_model.json"].write_text('{"repo_id": "peftpipe/tiny-llama"}\n')
    files["logs/train.log"].write_text("step 1 loss 2.5\n" * 100)
    files["weights/adapter.safetensors"].write_bytes(os.urandom(big_mib * MIB))
    return files


def test_round_trip_is_byte_identical_and_multipart(s3_server: SeaweedS3, tmp_path: Path) -> None:
    store = store_for(s3_server, "round-trip")
    files = run_files(tmp_path / "out", big_mib=23)
    published = publish_directory(store, "run-1", files, {"note": "test"})
    assert published.transferred == 3
    assert published.manifest["manifest_url"] == f"s3://{BUCKET}/round-trip/run-1/{MANIFEST}"

    head = store.client.head_object(Bucket=BUCKET, Key="round-trip/run-1/weights/adapter.safetensors",
                                    ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-5"'), "23 MiB in 5 MiB parts is a 5-part upload"
    assert head["ChecksumSHA256"].endswith("-5"), "each part went up with its SHA-256, checked by the server"

    restored = restore(store, "run-1", "weights/adapter.safetensors", tmp_path / "back.safetensors")
    assert restored[0].read_bytes() == files["weights/adapter.safetensors"].read_bytes()
    everything = restore(store, "run-1", "logs", tmp_path / "logs")
    assert [p.read_text() for p in everything] == [files["logs/train.log"].read_text()]

    again = publish_directory(store, "run-1", files, {"note": "test"})
    assert again.transferred == 0, "unchanged objects are not sent again"
    assert store.list_runs() == ["run-1"]


def test_a_damaged_object_is_refused_before_use(s3_server: SeaweedS3, tmp_path: Path) -> None:
    store = store_for(s3_server, "damaged")
    files = run_files(tmp_path / "out", big_mib=1)
    publish_directory(store, "run-1", files, {})
    # Same size, other bytes: only the sha256 tells (a size change is reported as one).
    tampered = b"T" * files["logs/train.log"].stat().st_size
    store.client.put_object(Bucket=BUCKET, Key="damaged/run-1/logs/train.log", Body=tampered)
    dest = tmp_path / "train.log"
    with pytest.raises(ChecksumMismatch, match="logs/train.log: sha256 .* differs from the manifest's"):
        restore(store, "run-1", "logs/train.log", dest)
    assert not dest.exists() and not list(tmp_path.glob(".*partial"))


def test_a_wrong_secret_key_fails_clearly_without_printing_it(s3_server: SeaweedS3, tmp_path: Path) -> None:
    wrong = "wrong-secret-0123456789abcdef"
    store = store_for(s3_server, "denied", secret=wrong)
    with pytest.raises(ArtifactStoreError) as refused:
        publish_directory(store, "run-1", run_files(tmp_path, big_mib=1), {})
    message = str(refused.value)
    assert message == (f"s3://{BUCKET}/denied: S3 at {s3_server.endpoint} refused the credentials from the test's"
                       " keys: the secret key does not match the access key id (SignatureDoesNotMatch)."
                       " Fix: correct those credentials.")
    assert wrong not in message and s3_server.env["AWS_SECRET_ACCESS_KEY"] not in message
    assert not isinstance(refused.value, StoreUnavailable), "a wrong key is not worth a retry"
    assert store_for(s3_server, "denied").list_runs() == []


def test_a_missing_bucket_says_so(s3_server: SeaweedS3) -> None:
    access = S3Access(session=s3_server.session(), source="the test's keys", endpoint_url=s3_server.endpoint)
    store = S3ArtifactStore("no-such-bucket", "x", SMALL_PARTS, access)
    with pytest.raises(ArtifactStoreError, match="bucket 'no-such-bucket' does not exist at .* Fix: create it"):
        store.check()


def _stop_then_restart(server: SeaweedS3, at_fraction: float, restart_after_s: float | None):
    """A progress callback that stops the server once the big file is ``at_fraction`` sent."""
    stopped = threading.Event()
    restarted = threading.Event()

    def on_progress(key: str, done: int, total: int) -> None:
        if key.startswith("weights/") and done >= total * at_fraction and not stopped.is_set():
            stopped.set()
            server.stop(signal.SIGKILL)
            if restart_after_s is not None:
                threading.Timer(restart_after_s, lambda: (server.start(), restarted.set())).start()

    return on_progress, stopped, restarted


@pytest.mark.slow
def test_server_killed_mid_upload_and_restarted_the_publish_completes(own_s3_server: SeaweedS3,
                                                                      tmp_path: Path) -> None:
    on_progress, stopped, restarted = _stop_then_restart(own_s3_server, 0.4, restart_after_s=0.2)
    store = store_for(own_s3_server, "outage", on_progress=on_progress)
    files = run_files(tmp_path / "out", big_mib=40)
    published = publish_directory(store, "run-1", files, {})  # botocore's retries wait out the outage
    assert stopped.is_set() and restarted.is_set()
    assert published.transferred == 3
    back = restore(store_for(own_s3_server, "outage"), "run-1", "weights", tmp_path / "back")
    assert back[0].read_bytes() == files["weights/adapter.safetensors"].read_bytes()


@pytest.mark.slow
def test_a_publish_cut_short_leaves_no_visible_run_and_a_rerun_sends_only_the_rest(own_s3_server: SeaweedS3,
                                                                                    tmp_path: Path) -> None:
    on_progress, stopped, _ = _stop_then_restart(own_s3_server, 0.4, restart_after_s=None)
    settings = SMALL_PARTS.model_copy(update={"max_attempts": 2})
    files = run_files(tmp_path / "out", big_mib=40)
    with pytest.raises(StoreUnavailable, match=r"did not answer after 2 attempts .* Fix: check that it is up"):
        publish_directory(store_for(own_s3_server, "cut", settings, on_progress=on_progress), "run-1", files, {})
    assert stopped.is_set()

    own_s3_server.start()
    store = store_for(own_s3_server, "cut")
    assert store.list_runs() == ["run-1"] and store.read_manifest("run-1") is None
    with pytest.raises(RunIncomplete, match="run 'run-1' has no manifest.json"):
        restore(store, "run-1", "logs", tmp_path / "logs")

    published = publish_directory(store, "run-1", files, {})
    assert published.transferred == 1, "the two objects stored before the outage are not sent again"
    back = restore(store, "run-1", "weights/adapter.safetensors", tmp_path)
    assert back[0].read_bytes() == files["weights/adapter.safetensors"].read_bytes()
