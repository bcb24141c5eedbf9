"""Upload and download throughput of one large file to the local SeaweedFS, in one run:

- ``project``: peftpipe's S3 store with its default settings (``S3StoreSpec()``), all costs
  included: a one-file publish (sha256 of the file, the idempotency HEAD, SHA-256 part
  checksums checked by the server, the manifest) and a restore (download, sha256 check).
- ``boto3-defaults``: ``client.upload_file`` / ``download_file`` with boto3's default
  TransferConfig (8 MiB parts, 10 threads) and client settings, no extra checks.
- ``--sweep``: the project's store over part sizes x concurrency, to choose its defaults.

    .venv/bin/python bench/s3_throughput.py [--size-mib 1024] [--repeat 3] [--sweep]

It starts a fresh server with scripts/start_s3.sh (data under .cache/seaweedfs-bench, removed
at the end; the test file stays in .cache/bench) and prints a Markdown table of MiB/s
(median of the repeats).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftpipe.artifacts import publish_directory, restore  # noqa: E402
from peftpipe.artifacts_s3 import S3Access, S3ArtifactStore  # noqa: E402
from peftpipe.spec import S3StoreSpec  # noqa: E402

MIB = 1 << 20
BUCKET = "peftpipe"
DATA_DIR = REPO / ".cache" / "seaweedfs-bench"


def stop_server() -> None:
    """Stop the bench's server and drop its data: deleted objects stay on disk until a vacuum."""
    pid_file = DATA_DIR / "weed.pid"
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            time.sleep(2)
        except ProcessLookupError:
            pass
    shutil.rmtree(DATA_DIR, ignore_errors=True)


def start_server() -> dict[str, str]:
    """A fresh server, so that every run measures the same empty store."""
    stop_server()
    env = {**os.environ, "S3_PORT": "auto", "S3_BUCKET": BUCKET}
    subprocess.run([str(REPO / "scripts" / "start_s3.sh"), str(DATA_DIR)], check=True, env=env)
    return dict(line.split("=", 1) for line in (DATA_DIR / "s3.env").read_text().split())


def test_file(size_mib: int) -> Path:
    path = REPO / ".cache" / "bench" / f"random-{size_mib}MiB.bin"
    if not path.is_file() or path.stat().st_size != size_mib * MIB:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for _ in range(size_mib):
                handle.write(os.urandom(MIB))
    return path


def session(env: dict[str, str]):  # noqa: ANN201 - a boto3 Session
    import boto3

    return boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                 region_name=env["AWS_DEFAULT_REGION"])


def project_trial(env: dict[str, str], source: Path, settings: S3StoreSpec, run_id: str) -> tuple[float, float]:
    access = S3Access(session=session(env), endpoint_url=env["AWS_ENDPOINT_URL"])
    store = S3ArtifactStore(BUCKET, "bench", settings, access)
    start = time.perf_counter()
    publish_directory(store, run_id, {"file.bin": source}, {})
    up = time.perf_counter() - start
    dest = source.with_name("download.bin")
    dest.unlink(missing_ok=True)
    start = time.perf_counter()
    restore(store, run_id, "file.bin", dest)
    down = time.perf_counter() - start
    for key in ("file.bin", "manifest.json"):
        store.client.delete_object(Bucket=BUCKET, Key=store.key_for(run_id, key))
    dest.unlink()
    return up, down


def defaults_trial(env: dict[str, str], source: Path, run_id: str) -> tuple[float, float]:
    client = session(env).client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    key = f"bench/{run_id}/file.bin"
    start = time.perf_counter()
    client.upload_file(str(source), BUCKET, key)
    up = time.perf_counter() - start
    dest = source.with_name("download.bin")
    start = time.perf_counter()
    client.download_file(BUCKET, key, str(dest))
    down = time.perf_counter() - start
    client.delete_object(Bucket=BUCKET, Key=key)
    dest.unlink()
    return up, down


def measure(env: dict[str, str], source: Path, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    project = S3StoreSpec()
    variants: list[tuple[str, object]] = [
        (f"project ({project.part_size_mb} MiB parts, {project.max_concurrency} threads, sha256 checked)", project),
        ("boto3 defaults (8 MiB parts, 10 threads)", None),
    ]
    if args.sweep:
        variants += [(f"project, {part} MiB parts, {threads} threads", S3StoreSpec(part_size_mb=part,
                                                                                   max_concurrency=threads))
                     for part in (8, 16, 32, 64, 128) for threads in (4, 8, 16)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    for rep in range(args.repeat):  # interleaved, so that drift on a shared machine hits every variant
        for index, (name, settings) in enumerate(variants):
            run_id = f"r{rep}-v{index}"
            timing = (defaults_trial(env, source, run_id) if settings is None
                      else project_trial(env, source, settings, run_id))  # type: ignore[arg-type]
            results[name].append(timing)
            print(f"  {name}: up {args.size_mib / timing[0]:.0f} MiB/s, down {args.size_mib / timing[1]:.0f} MiB/s",
                  file=sys.stderr, flush=True)
    return results


def report(results: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    print(f"\n{args.size_mib} MiB file, SeaweedFS on 127.0.0.1, {os.cpu_count()} CPUs, {platform.python_version()},"
          f" median of {args.repeat}\n")
    print("| variant | upload MiB/s | download MiB/s | upload runs (s) | download runs (s) |")
    print("|---|---|---|---|---|")
    for name, timings in results.items():
        ups, downs = [t[0] for t in timings], [t[1] for t in timings]
        print(f"| {name} | {args.size_mib / statistics.median(ups):.0f} | {args.size_mib / statistics.median(downs):.0f}"
              f" | {', '.join(f'{t:.1f}' for t in ups)} | {', '.join(f'{t:.1f}' for t in downs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="also try part sizes x concurrency")
    args = parser.parse_args()
    source = test_file(args.size_mib)
    env = start_server()
    try:
        results = measure(env, source, args)
    finally:
        stop_server()
    report(results, args)


if __name__ == "__main__":
    main()
