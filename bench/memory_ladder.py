"""The memory ladder on one GPU: the hf engine at each rung, and a forced OOM that walks the rungs.

    python3 bench/memory_ladder.py --out DIR [--shapes llama-1b llama-8b] [--rungs none checkpointing offload]
    python3 bench/memory_ladder.py --out DIR --oom          # the forced-OOM ladder walk only
    python3 bench/memory_ladder.py --out DIR --smoke        # tiny model on the CPU, to check the script

Rungs: none (no cap), checkpointing (activation checkpointing), offload (checkpointing with the
checkpointed inputs in pinned host memory, ``peftpipe.engines.hf.offload``). Each (shape, rung)
builds the engine's model once (random weights, bf16, LoRA r16 alpha 32 on q/k/v/o, as
``train_throughput.py`` does) and runs every micro batch of ``--sizes`` (until CUDA runs out of
memory), 2 warm-up + ``--steps`` timed steps of full-length rows of ``--seq`` tokens: tokens/s,
MFU(4N) = 4 * N * tokens/s / 989.4e12, peak = ``torch.cuda.max_memory_allocated`` (weights
included), and ``peftpipe.memory``'s estimate for that rung with its error.

``--oom``: a real CUDA OOM walked through the pipeline's own retry loop (``attempts.run_attempts``,
the hf fine-tune stage on the local backend): the 1B shape at ``--oom-seq`` tokens a row, global
batch 2 from micro batch 2, the training processes' CUDA allocator capped
(``PEFTPIPE_GPU_MEMORY_CAP_GIB``) between the measured checkpointing and offload peaks at micro
batch 1, so micro batch 2, micro batch 1, checkpointing run out of memory and offload completes.
Timings never decide a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import train_throughput as tt  # noqa: E402

from peftpipe.engines.hf.offload import HostOffload  # noqa: E402
from peftpipe.engines.hf.modeling import prepare_model  # noqa: E402
from peftpipe.engines.hf.train import make_optimizer  # noqa: E402
from peftpipe.memory import estimate_memory  # noqa: E402

PEAK_FLOPS = 989.4e12
LORA = {"method": "lora", "r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": tt.QKVO}
RUNGS = {"none": (False, False), "checkpointing": (True, False), "offload": (True, True)}
SIZES = {("llama-1b", "none"): [8, 16, 32], ("llama-8b", "none"): [8, 16],
         ("llama-1b", "checkpointing"): [1, 8, 32, 64], ("llama-8b", "checkpointing"): [1, 4, 16, 32],
         ("llama-1b", "offload"): [1, 8, 32, 64], ("llama-8b", "offload"): [1, 4, 16, 32]}


def setup(shape: dict[str, Any], rung: str, device: torch.device) -> tuple:
    checkpointing, offload = RUNGS[rung]
    prepared = prepare_model(tt.build_base(shape, device, torch.bfloat16 if device.type == "cuda" else torch.float32),
                             dict(LORA), device, activation_checkpointing=checkpointing)
    trainable = [p for p in prepared.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, {"learning_rate": 1e-4, "weight_decay": 0.0}, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    prepared.model.train()
    return (prepared, optimizer, trainable, scheduler), (HostOffload(prepared.model, device) if offload else None)


def rung_sweep(args: argparse.Namespace, name: str, rung: str, device: torch.device) -> list[dict[str, Any]]:
    shape = tt.MODELS[name][1]
    model_shape = tt.model_shape(shape)
    checkpointing, offload = RUNGS[rung]
    tt.free_memory()
    built, host = setup(shape, rung, device)
    kernels = "liger" if any(f.startswith("liger rmsnorm") for f in built[0].features) else "fused"
    rows = []
    for mbs in args.sizes or SIZES.get((name, rung), [1, 2]):
        tt.free_memory()
        steps = args.steps + 2
        data = tt.random_rows(mbs * steps, args.seq, shape["vocab_size"], seed=mbs)
        settings = {"micro_batch_size": mbs, "max_seq_length": args.seq, "packing": False, "pad_id": 0,
                    "precision": "bf16" if device.type == "cuda" else "fp32"}
        if host is not None:
            settings["offload"] = host
        estimate = estimate_memory(model_shape, args.seq, mbs, kernels=kernels, target_modules=tuple(tt.QKVO),
                                   activation_checkpointing=checkpointing, offload_activations=offload).total_gib
        try:
            seconds, tokens, loss = tt.engine_trial(built, [data[i * mbs:(i + 1) * mbs] for i in range(steps)],
                                                    settings, device)
        except torch.OutOfMemoryError:
            rows.append({"shape": name, "rung": rung, "micro_batch": mbs, "oom": True, "estimate_gib": estimate})
            print(f"{name} {rung:<14} mbs {mbs:>3}  CUDA out of memory (estimate {estimate:.1f} GiB)", flush=True)
            break
        peak = tt.peak_gib(device)
        row = {"shape": name, "rung": rung, "micro_batch": mbs, "tokens_per_s": tokens / seconds,
               "mfu_4n": 4 * model_shape.parameters * tokens / seconds / PEAK_FLOPS, "peak_gib": peak,
               "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
               "estimate_gib": estimate, "estimate_error": estimate / peak - 1 if peak == peak else None,
               "first_loss": loss, "offloaded_gib_per_step": host.take_offloaded_bytes() / 2**30 / steps if host else 0,
               "features": built[0].features}
        rows.append(row)
        print(f"{name} {rung:<14} mbs {mbs:>3}  {row['tokens_per_s']:>9,.0f} tok/s  {row['mfu_4n']:6.1%}"
              f"  peak {peak:6.2f} GiB  estimate {estimate:6.2f} GiB ({row['estimate_error'] or 0:+.1%})", flush=True)
    del built, host
    tt.free_memory()
    return rows


# --- the forced OOM ---------------------------------------------------------------------------------


def oom_walk(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import gpu_oom_recovery as g

    from peftpipe.attempts import AttemptRecord, first_attempt, run_attempts
    from peftpipe.backends import LocalBackend
    from peftpipe.engines.hf.stages import finetune_stage
    from peftpipe.failures import fatal_line
    from peftpipe.paths import RunPaths
    from peftpipe.preflight import choose_micro_batch, memory_estimator
    from peftpipe.stages import prepare_stage
    from peftpipe.validation import load_spec

    seq = args.oom_seq
    shape = tt.LLAMA_1B if device.type == "cuda" else tt.TINY
    # Calibrate the cap on this GPU: peaks of checkpointing and offload at micro batch 1, in this process, with
    # packed rows as the training script runs them (padded rows take another attention path, ~1 GiB more at 16k).
    peaks = {}
    for rung in ("checkpointing", "offload"):
        tt.free_memory()
        built, host = setup(shape, rung, device)
        settings = {"micro_batch_size": 1, "max_seq_length": seq, "packing": True, "pad_id": 0,
                    "precision": "bf16" if device.type == "cuda" else "fp32"}
        if host is not None:
            settings["offload"] = host
        data = tt.random_rows(3, seq, shape["vocab_size"], seed=1)
        tt.engine_trial(built, [[row] for row in data], settings, device)
        peaks[rung] = {"allocated": tt.peak_gib(device),
                       "reserved": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else 0}
        del built, host
        tt.free_memory()
    cap = args.oom_cap_gib or (peaks["checkpointing"]["allocated"]
                               + max(peaks["offload"]["reserved"], peaks["offload"]["allocated"])) / 2
    print(f"calibration at micro batch 1, seq {seq}: {peaks}; allocator cap {cap:.2f} GiB", flush=True)

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    g_shape = dict(g.LLAMA_1B if device.type == "cuda" else g.SMOKE, max_position_embeddings=max(seq, 4096))
    g.build_model(work / "model", g_shape, device.type)
    rng = random.Random(0)
    with (work / "records.jsonl").open("w") as out:
        for index in range(64):
            context = " ".join(rng.choice(g.WORDS) for _ in range(seq + 500))  # every row full after truncation
            out.write(json.dumps({"input": f"Context: {context}\nQuestion: item {index}?", "output": "cells"}) + "\n")
    spec_file = work / "spec.yaml"
    spec_file.write_text(json.dumps({
        "name": "gpu-oom-ladder", "model": {"path": str(work / "model")},
        "dataset": {"format": "jsonl", "path": str(work / "records.jsonl"),
                    "split": {"validation": 0.05, "test": 0.05}, "prompt_template": "{input}\nAnswer: {output}"},
        "peft": {"method": "lora", "lora": {"r": 16, "alpha": 32, "target_modules": tt.QKVO}},
        "train": {"global_batch_size": 2, "micro_batch_size": 2, "max_steps": 2, "checkpoint_every": 1,
                  "max_seq_length": seq, "precision": "bf16" if device.type == "cuda" else "fp32",
                  "max_attempts": 6, "preflight": False},
        "workdir": str(work / "runs")}))
    loaded = load_spec(spec_file)
    paths = RunPaths(work / "runs" / "gpu-oom-ladder")
    prepare_stage(loaded, paths)
    os.environ["PEFTPIPE_GPU_MEMORY_CAP_GIB"] = f"{cap:.3f}"
    config = json.loads((work / "model" / "config.json").read_text())
    estimator = memory_estimator(loaded.spec, config)
    preflight_says = choose_micro_batch(loaded.spec, config, cap / 0.85 + 0.75).describe()  # a GPU of that size
    print(preflight_says, flush=True)
    table: list[AttemptRecord] = []

    def run_one(settings: Any) -> Any:
        return finetune_stage(loaded, paths, loaded.resolve(loaded.spec.model.path), settings,
                              on_line=lambda line: print(line, flush=True), backend=LocalBackend(), stop_rule=fatal_line)

    started = time.monotonic()
    result = run_attempts(loaded.spec, first_attempt(loaded.spec), run_one,
                          on_records=lambda records: table.__setitem__(slice(None), records), estimate_gib=estimator)
    for attempt_dir in sorted((paths.root / "finetune").glob("attempt-*")):
        shutil.copy(attempt_dir / "output.log", args.out / f"oom-{attempt_dir.name}.log")
    return {"seq": seq, "calibration": peaks, "cap_gib": cap, "preflight_for_that_gpu": preflight_says,
            "attempts": [r.as_row() for r in table], "final_step": result.final_step,
            "final_loss": result.final_loss, "peak_memory_gib": result.peak_memory_gib,
            "walk_s": round(time.monotonic() - started, 1)}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "liger-kernel", "triton"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="+", default=["llama-8b", "llama-1b"])
    parser.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=list(RUNGS))
    parser.add_argument("--sizes", type=int, nargs="+", help="micro batches (default: per shape and rung)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--oom", action="store_true", help="only the forced-OOM ladder walk")
    parser.add_argument("--oom-seq", type=int, default=16384)
    parser.add_argument("--oom-cap-gib", type=float, help="the allocator cap (default: calibrated)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-oom-ladder"))
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.shapes, args.seq, args.steps, args.sizes = ["tiny"], 64, 1, [1, 2]
        args.oom_seq = min(args.oom_seq, 128)
    if args.oom:
        walk = oom_walk(args, device)
        (args.out / "oom_ladder.json").write_text(json.dumps({"versions": versions(), **walk}, indent=2) + "\n")
        print(json.dumps(walk["attempts"], indent=2))
        return
    results: list[dict[str, Any]] = []
    for name in args.shapes:
        for rung in args.rungs:
            results += rung_sweep(args, name, rung, device)
            (args.out / "memory_ladder.json").write_text(json.dumps(
                {"versions": versions(), "seq": args.seq, "steps": args.steps, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
