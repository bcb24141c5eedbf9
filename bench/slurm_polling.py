"""How many Slurm commands does watching one job cost? Counts every command per minute.

    .venv/bin/python bench/slurm_polling.py --seconds 180 [--cap 30]

A job that sleeps is submitted and watched with the pipeline's own watcher (back-off 2 s
doubling to the cap; the log is read from the file system, which costs Slurm nothing).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

from peftpipe.slurm.client import SlurmClient
from peftpipe.slurm.render import JobRequest, render_batch_script
from peftpipe.slurm.watch import watch_job


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--cap", type=float, default=30.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slurm-polling-"))
    script = work / "sleep.sbatch"
    script.write_text(render_batch_script(JobRequest(
        job_name="peftpipe-bench-polling", output=work / "slurm-%j.out", mem="128M", time_limit="00:30:00",
        program=["bash", "-c", f"for i in $(seq {args.seconds}); do echo step $i; sleep 1; done"])))
    client = SlurmClient()
    job = client.submit(script)
    start = time.monotonic()
    watch_job(client, job, work / f"slurm-{job}.out", poll_cap_s=args.cap)
    elapsed = time.monotonic() - start
    per_minute = collections.Counter(int((t - start) // 60) for t, _ in client.calls)
    kinds = collections.Counter(name for _, name in client.calls)
    print(f"job {job}: {elapsed:.0f} s watched, cap {args.cap:.0f} s, {len(client.calls)} commands {dict(kinds)}")
    for minute in sorted(per_minute):
        print(f"  minute {minute + 1}: {per_minute[minute]} commands")


if __name__ == "__main__":
    main()
