"""Hostile and broken store contents (issue 18), against the file store and a real SeaweedFS.

A store may be a bucket the whole lab can write: a manifest's keys, sizes and checksums, a
promotion pointer's run id and the store's listing are input, checked before anything is
written or trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peftpipe.artifacts import MANIFEST, ArtifactStore, ArtifactStoreError, publish_directory, restore
from peftpipe.artifacts_s3 import S3Access
from peftpipe.promotion import read_promoted
from peftpipe.spec import S3StoreSpec
from peftpipe.stores import open_store
from tests.s3_fixtures import BUCKET, SeaweedS3

PAYLOAD = b"hostile bytes\n"


@pytest.fixture(params=["file", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ArtifactStore, str, dict[str, str]]:
    """(store, its URL, the environment a CLI needs to reach it) for each kind of store."""
    if request.param == "file":
        url = f"file://{tmp_path / 'store'}"
        return open_store(url), url, {}
    server: SeaweedS3 = request.getfixturevalue("s3_server")
    url = f"s3://{BUCKET}/hostile-{request.node.name.replace('[', '-').replace(']', '').replace('/', '-')[-60:]}"
    access = S3Access(session=server.session(), endpoint_url=server.endpoint)
    return open_store(url, S3StoreSpec(addressing_style="path"), access), url, server.env


def put_raw(store: ArtifactStore, run_id: str, key: str, content: bytes) -> None:
    """Write an object the way someone with write access to the store could, around every check."""
    if hasattr(store, "client"):  # S3: SeaweedFS refuses `..` in a key, so also where a request path resolves
        from botocore.exceptions import ClientError

        for target in (f"{store.prefix}/{run_id}/{key}", posixpath.normpath(f"{store.prefix}/{run_id}/{key}")):
            try:
                store.client.put_object(Bucket=store.bucket, Key=target, Body=content)
                return
            except ClientError:
                continue
    else:  # a file store holds only what lies below its directory
        target = Path(os.path.normpath(store.root / run_id / key.replace("//", "/")))
        if store.root.resolve() in target.parents:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def publish_good_run(store: ArtifactStore, run_id: str, tmp_path: Path) -> dict:
    source = tmp_path / f"{run_id}-src"
    source.mkdir(parents=True)
    (source / "adapter_config.json").write_text('{"r": 8}\n')
    return publish_directory(store, run_id, {"adapter/adapter_config.json": source / "adapter_config.json"},
                             {"base_model": {"repo_id": "peftpipe/tiny-llama"}}).manifest


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftpipe", "artifacts", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400", **env}, cwd=cwd, timeout=120)


def hostile_keys(victim: Path) -> list[str]:
    return [
        "adapter/../escaped.txt",
        "adapter/../../../../../../../../../../.." + str(victim),  # any depth, on S3
        "adapter//" + str(victim).lstrip("/"),  # dest / "/abs/path" is that absolute path
        "adapter\\..\\escaped.txt",
        "adapter/a\x00b",
        "adapter/C:/escaped.txt",
    ]


@pytest.mark.parametrize("which", range(6), ids=["dotdot", "deep-dotdot", "double-slash-abs", "backslash", "nul",
                                                 "drive"])
def test_a_manifest_key_that_leaves_the_destination_is_refused_and_nothing_is_written(
        store_env: tuple, tmp_path: Path, which: int) -> None:
    store, _, _ = store_env
    victim = tmp_path / "victim" / "authorized_keys"
    key = hostile_keys(victim)[which]
    manifest = publish_good_run(store, "evil-run", tmp_path)
    if "\x00" not in key:
        put_raw(store, "evil-run", key, PAYLOAD)
    manifest["objects"].append({"key": key, "size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()})
    store.write_manifest("evil-run", manifest)
    dest = tmp_path / "work" / "dest"
    dest.mkdir(parents=True)

    with pytest.raises(ValueError) as refused:
        restore(store, "evil-run", "adapter", dest)

    message = str(refused.value)
    assert "evil-run" in message and repr(key) in message, message
    assert list(dest.iterdir()) == [], "nothing is written, not even the good object"
    assert not victim.exists() and not (tmp_path / "work" / "escaped.txt").exists()


def test_artifacts_get_with_a_traversing_key_exits_1_in_one_line(store_env: tuple, tmp_path: Path) -> None:
    store, url, env = store_env
    manifest = publish_good_run(store, "evil-run", tmp_path)
    put_raw(store, "evil-run", "adapter/../escaped.txt", PAYLOAD)
    manifest["objects"].append({"key": "adapter/../escaped.txt", "size": len(PAYLOAD),
                                "sha256": hashlib.sha256(PAYLOAD).hexdigest()})
    store.write_manifest("evil-run", manifest)
    (tmp_path / "node").mkdir()

    got = cli("get", "evil-run", "adapter", "dest", "--store", url, env=env, cwd=tmp_path / "node")

    assert got.returncode == 1 and "Traceback" not in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    assert "'evil-run'" in got.stderr and "'adapter/../escaped.txt'" in got.stderr
    assert "sha256 verified" not in got.stdout
    assert not (tmp_path / "node" / "escaped.txt").exists() and not (tmp_path / "node" / "dest").exists()


MALFORMED = {  # run id: (manifest content, the problem named)
    "not-json": (b"{not json", "not valid JSON"),
    "a-list": (b"[1, 2]", "holds a JSON list, not an object"),
    "no-objects": (b'{"run_id": "broken"}', "has no `objects` list"),
    "no-sha256": (b'{"objects": [{"key": "adapter/x", "size": 3}]}', "sha256 None is not 64 hex digits"),
    "size-text": (b'{"objects": [{"key": "adapter/x", "size": "3", "sha256": "' + b"a" * 64 + b'"}]}',
                  "size '3' is not a byte count"),
    "entry-list": (b'{"objects": [["adapter/x"]]}', "objects[0] is a list, not an object"),
}


def test_a_malformed_manifest_is_named_and_does_not_break_the_listing(store_env: tuple, tmp_path: Path) -> None:
    store, url, env = store_env
    publish_good_run(store, "good-run", tmp_path)
    for run_id, (content, _) in MALFORMED.items():
        publish_good_run(store, run_id, tmp_path)
        put_raw(store, run_id, MANIFEST, content)

    for run_id, (_, problem) in MALFORMED.items():
        with pytest.raises(ValueError, match=re.escape(problem)) as caught:
            restore(store, run_id, "adapter", tmp_path / "dest")
        assert f"run {run_id!r}" in str(caught.value)
    listing = cli("ls", "--store", url, env=env, cwd=tmp_path)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    rows = {line.split("│")[1].strip(): line for line in listing.stdout.splitlines() if line.count("│") >= 3}
    assert "complete" in rows["good-run"] and "malformed manifest" not in rows["good-run"]
    for run_id, (_, problem) in MALFORMED.items():
        assert "malformed manifest" in rows[run_id] and problem in rows[run_id], listing.stdout
    for command in (["ls", "no-sha256"], ["get", "size-text", "adapter", "dest"]):
        shown = cli(*command, "--store", url, env=env, cwd=tmp_path)
        assert shown.returncode == 1 and "Traceback" not in shown.stderr, shown.stderr
        assert len(shown.stderr.strip().splitlines()) == 1
        assert f"run {command[1]!r}" in shown.stderr and MALFORMED[command[1]][1] in shown.stderr
    assert not (tmp_path / "dest").exists()


def test_an_object_missing_from_the_store_is_one_clear_line(store_env: tuple, tmp_path: Path) -> None:
    store, url, env = store_env
    publish_good_run(store, "gone", tmp_path)
    if hasattr(store, "client"):
        store.client.delete_object(Bucket=store.bucket, Key=store.key_for("gone", "adapter/adapter_config.json"))
    else:
        (store.root / "gone" / "adapter" / "adapter_config.json").unlink()

    got = cli("get", "gone", "adapter", "dest", "--store", url, env=env, cwd=tmp_path)

    assert got.returncode == 1 and "Traceback" not in got.stderr, got.stderr
    assert "adapter/adapter_config.json is listed in the manifest but missing from the store" in got.stderr
    assert not (tmp_path / "dest" / "adapter_config.json").exists()


def test_a_size_mismatch_is_reported_as_one(store_env: tuple, tmp_path: Path) -> None:
    store, _, _ = store_env
    manifest = publish_good_run(store, "resized", tmp_path)
    stored = manifest["objects"][0]
    manifest["objects"][0] = {**stored, "size": stored["size"] + 5}
    store.write_manifest("resized", manifest)

    with pytest.raises(ArtifactStoreError) as caught:
        restore(store, "resized", "adapter", tmp_path / "dest")

    message = str(caught.value)
    assert f"size {stored['size']:,} bytes differs from the manifest's {stored['size'] + 5:,}" in message
    assert message.count(stored["sha256"]) == 0, "not reported as a sha256 mismatch"
    assert not (tmp_path / "dest" / "adapter_config.json").exists()


def test_a_promotion_pointer_with_a_hostile_run_id_is_not_used(store_env: tuple, tmp_path: Path) -> None:
    store, url, env = store_env
    put_raw(store, "_promoted", "tiny.json", json.dumps({"run_id": "../../outside", "metric": "f1"}).encode())

    with pytest.raises(ArtifactStoreError, match=r"run_id '\.\./\.\./outside' is not a valid run id"):
        read_promoted(store, "tiny")
    shown = cli("promoted", "tiny", "--store", url, env=env, cwd=tmp_path)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr and "../../outside" in shown.stderr
    traversing = cli("promoted", "../tiny", "--store", url, env=env, cwd=tmp_path)
    assert traversing.returncode == 1 and "Traceback" not in traversing.stderr
    assert "spec name '../tiny' is not a valid spec name" in traversing.stderr


def test_run_ids_from_outside_never_leave_the_store(store_env: tuple, tmp_path: Path) -> None:
    store, url, env = store_env
    publish_good_run(store, "inside", tmp_path)
    # Something readable next to the store, and names in the store that are not run ids.
    if hasattr(store, "client"):
        put_raw(store, "a..b", MANIFEST, json.dumps({"objects": []}).encode())
        put_raw(store, "Not A Run", MANIFEST, json.dumps({"objects": []}).encode())
    else:
        publish_good_run(open_store(f"file://{tmp_path}"), "other", tmp_path / "o")
        (store.root / "Not A Run").mkdir()

    assert store.list_runs() == ["inside"]
    for run_id in ("../other", "..", "_promoted", "/etc", "inside/../inside"):
        with pytest.raises(ValueError, match=f"{re.escape(repr(run_id))} is not a valid run id"):
            store.read_manifest(run_id)
        with pytest.raises(ValueError, match=f"{re.escape(repr(run_id))} is not a valid run id"):
            restore(store, run_id, "adapter", tmp_path / "dest")
    for run_id in ("../other", "_promoted"):
        listed = cli("ls", run_id, "--store", url, env=env, cwd=tmp_path)
        assert listed.returncode == 1 and "Traceback" not in listed.stderr, listed.stderr
        assert f"{run_id!r} is not a valid run id" in listed.stderr
    assert not (tmp_path / "dest").exists()
