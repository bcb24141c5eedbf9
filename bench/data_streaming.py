"""Peak memory and throughput of `peftpipe data convert` on a generated multi-GB JSONL file.

    .venv/bin/python bench/data_streaming.py --size-gb 1.0

Writes a custom JSONL file (question/context/answer/id, about 1 KB per record, 1% repeated
pairs, some Japanese) under --workdir, converts it with the real CLI in a child process
(field mapping, seeded split, de-duplication, fingerprint), and reports the child's peak RSS
(resource.getrusage(RUSAGE_CHILDREN).ru_maxrss) and records per second. A first child converts
a 1,000-record file, so the baseline (interpreter, pydantic, typer, rich) can be told apart.
Not part of the test suite: it takes minutes and gigabytes of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("glacier moraine tide lighthouse harbour granite basalt estuary delta monsoon current plankton reef "
         "lagoon dune erosion sediment river valley summit ridge plateau canyon aquifer spring").split()
JAPANESE = "富士山は標高3776メートルの日本最高峰の山で、静岡県と山梨県にまたがる活火山である。"


def generate(path: Path, target_bytes: int, seed: int = 0) -> int:
    """Write records until the file reaches ``target_bytes``; return how many."""
    rng = random.Random(seed)
    written = count = 0
    recent: list[str] = []
    with path.open("w", encoding="utf-8") as handle:
        while written < target_bytes:
            if recent and rng.random() < 0.01:
                line = rng.choice(recent)
            else:
                context = " ".join(rng.choice(WORDS) for _ in range(120))
                if count % 50 == 0:
                    context += " " + JAPANESE
                answer = " ".join(rng.choice(WORDS) for _ in range(3))
                record = {"id": f"rec-{count}", "question": f"What follows the {rng.choice(WORDS)} in text {count}?",
                          "context": context, "answer": answer}
                line = json.dumps(record, ensure_ascii=False) + "\n"
                recent = (recent + [line])[-100:]
            handle.write(line)
            written += len(line.encode("utf-8"))
            count += 1
    return count


def convert(source: Path, out_dir: Path) -> float:
    command = [sys.executable, "-m", "peftpipe", "data", "convert", "--format", "jsonl",
               "--field", r"input={question}\n{context}", "--field", "output=answer",
               str(source), str(out_dir)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/peftpipe-data-bench"))
    parser.add_argument("--keep", action="store_true", help="Keep the generated and converted files.")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        small = args.workdir / "small.jsonl"
        generate(small, 1_000 * 1_050)
        convert(small, args.workdir / "small-out")
        baseline = peak_rss_mib()

        source = args.workdir / "input.jsonl"
        started = time.perf_counter()
        records = generate(source, int(args.size_gb * 1e9))
        generation_s = time.perf_counter() - started
        seconds = convert(source, args.workdir / "out")
        stats = json.loads((args.workdir / "out" / "stats.json").read_text())
        result = {
            "input_bytes": source.stat().st_size,
            "records": records,
            "written": stats["counts"],
            "duplicates_removed": stats["duplicates_removed"],
            "convert_s": round(seconds, 1),
            "records_per_s": round(records / seconds),
            "mb_per_s": round(source.stat().st_size / 1e6 / seconds, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "baseline_rss_mib_1k_records": round(baseline, 1),
            "generation_s": round(generation_s, 1),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
