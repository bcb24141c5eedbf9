"""Training throughput of the hf engine next to a plain transformers + peft loop, in one process.

    python bench/train_throughput.py --out results.json            # on a GPU: the full table
    python bench/train_throughput.py --smoke                       # on a CPU: a tiny model, to check the script

The model is built from a config with random weights (no download): Llama-3.2-1B's shape by
default, or another family's (``--model``: the OpenCALM-3B and rinna-3.6B GPT-NeoX shapes, Qwen2,
Gemma 2). Every configuration sweeps the micro batch (powers of two) until CUDA runs out of
memory and reports the best: tokens/s, MFU(4N) = 4 * N * tokens/s / peak bf16 dense FLOP/s
(N = all parameters; 989.4 TFLOP/s for an H100 SXM), peak allocated memory, and the estimate of
``peftpipe.memory`` for it.

- plain: ``model(input_ids, labels=input_ids).loss.backward()``, AdamW on the adapters, SDPA,
  bf16 weights, peft's defaults: what a user writes by hand.
- engine: the engine's own training code (``prepare_model``, ``accumulate_gradients``,
  ``optimizer_step`` of ``peftpipe.engines.hf``) on the same tokens and labels.
- real lengths: records with SQuAD-like lengths and answer-only labels; useful (non-pad)
  tokens/s of the engine padding each micro batch to its longest record vs packing, and the
  loss of both layouts on the same global batch.

Plain configurations run first: Liger patches transformers' Llama classes process-wide.
Not part of the test suite: timings never decide a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftpipe.engines.hf.modeling import prepare_model  # noqa: E402
from peftpipe.engines.hf.packing import IGNORE_INDEX, label_tokens  # noqa: E402
from peftpipe.engines.hf.train import accumulate_gradients, make_optimizer, optimizer_step  # noqa: E402
from peftpipe.memory import ModelShape, estimate_memory  # noqa: E402

PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "vocab_size": 128256, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 8192, "tie_word_embeddings": True}
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 14336, "tie_word_embeddings": False}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 176, "tie_word_embeddings": True}
# --model: (transformers config class, its arguments). GPT-NeoX shapes from the models' config.json.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-1b": ("LlamaConfig", LLAMA_1B),
    "llama-8b": ("LlamaConfig", LLAMA_8B),
    "tiny": ("LlamaConfig", TINY),
    "tiny-neox": ("GPTNeoXConfig", {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512,
                                    "num_attention_heads": 4, "intermediate_size": 256, "tie_word_embeddings": False}),
    "tiny-gemma2": ("Gemma2Config", {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512, "head_dim": 16,
                                     "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 176}),
    "opencalm-3b": ("GPTNeoXConfig", {"hidden_size": 2560, "num_hidden_layers": 32, "vocab_size": 52096,
                                      "num_attention_heads": 32, "intermediate_size": 10240, "rotary_pct": 1.0,
                                      "use_parallel_residual": True, "tie_word_embeddings": False}),
    "rinna-3.6b": ("GPTNeoXConfig", {"hidden_size": 2816, "num_hidden_layers": 36, "vocab_size": 32000,
                                     "num_attention_heads": 22, "intermediate_size": 11264, "rotary_pct": 1.0,
                                     "use_parallel_residual": False, "tie_word_embeddings": False}),
    "qwen2-1.5b": ("Qwen2Config", {"hidden_size": 1536, "num_hidden_layers": 28, "vocab_size": 151936,
                                   "num_attention_heads": 12, "num_key_value_heads": 2, "intermediate_size": 8960,
                                   "tie_word_embeddings": True}),
    "gemma2-2b": ("Gemma2Config", {"hidden_size": 2304, "num_hidden_layers": 26, "vocab_size": 256000,
                                   "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                                   "intermediate_size": 9216, "query_pre_attn_scalar": 256, "sliding_window": 4096}),
}
# Engine variants: (use_liger, fuse_projections); None = Liger when installed.
ENGINE_VARIANTS = {"engine": (None, True), "engine-noliger": (False, True), "engine-unfused": (None, False)}
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = QKVO + ["gate_proj", "up_proj", "down_proj"]
METHODS = {
    "lora-qkvo": {"method": "lora", "r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": QKVO},
    "lora-all": {"method": "lora", "r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": ALL_LINEAR},
    "ia3": {"method": "ia3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    "ptuning": {"method": "ptuning", "num_virtual_tokens": 10, "encoder_hidden_size": 128},
    # GPT-NeoX (OpenCALM, rinna): the fused q/k/v projection and the attention output.
    "lora-qkv-dense": {"method": "lora", "r": 16, "alpha": 32.0, "dropout": 0.0,
                       "target_modules": ["query_key_value", "dense"]},
    "lora-auto": {"method": "lora", "r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": "auto"},
}


def model_config(shape: dict[str, Any]) -> Any:
    import transformers

    class_name, arguments = next((c, a) for c, a in MODELS.values() if a is shape)
    return getattr(transformers, class_name)(**arguments, max_position_embeddings=8192)


def build_base(shape: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    from transformers import AutoModelForCausalLM

    config = model_config(shape)
    # The attention the engine loads the family with (modeling.load_base_model): eager for soft-capping.
    attention = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention).to(dtype)
    return model


def model_shape(shape: dict[str, Any]) -> ModelShape:
    """The estimate's shape, from the meta-device model as the preflight reads it."""
    from peftpipe.model_inspect import inspect_config

    return ModelShape.from_layout(inspect_config(model_config(shape).to_dict()))


def resolved_targets(shape: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    from peftpipe.model_inspect import inspect_config
    from peftpipe.model_fit import resolved_peft

    return resolved_peft(settings, inspect_config(model_config(shape).to_dict()))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


# --- one configuration at one micro batch -------------------------------------------------------------


def plain_trial(shape: dict[str, Any], peft_settings: dict[str, Any], batches: list[dict[str, torch.Tensor]],
                device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per step of the plain loop over ``batches`` (all but the first two are timed)."""
    from peft import get_peft_model

    from peftpipe.engines.hf.modeling import peft_config

    model = get_peft_model(build_base(shape, device, dtype), peft_config(peft_settings))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    started = 0.0
    for index, batch in enumerate(batches):
        if index == 2:
            sync(device)
            started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - started) / (len(batches) - 2)


def engine_setup(shape: dict[str, Any], peft_settings: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 use_liger: bool | None, fuse: bool = True) -> tuple[Any, Any, list, Any]:
    prepared = prepare_model(build_base(shape, device, dtype), peft_settings, device, activation_checkpointing=False,
                             use_liger=use_liger, fuse=fuse)
    trainable = [p for p in prepared.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, {"learning_rate": 1e-4, "weight_decay": 0.0}, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    prepared.model.train()
    return prepared, optimizer, trainable, scheduler


def engine_trial(setup: tuple, steps: list[list[dict[str, list[int]]]], settings: dict[str, Any],
                 device: torch.device) -> tuple[float, int, float]:
    """Seconds per step, real tokens per step and the first step's mean loss, over global batches ``steps``."""
    prepared, optimizer, trainable, scheduler = setup
    scaler = torch.amp.GradScaler(enabled=False)
    started, tokens, first_loss = 0.0, 0, float("nan")
    for index, examples in enumerate(steps):
        if index == 2:
            sync(device)
            started, tokens = time.perf_counter(), 0
        label_count = sum(label_tokens(e) for e in examples)
        loss, seen, _ = accumulate_gradients(prepared.model, prepared, examples, label_count, settings, 1, scaler, device)
        optimizer_step(optimizer, scheduler, scaler, trainable)
        tokens += seen
        if index == 0:
            first_loss = float(loss) / label_count
    sync(device)
    return (time.perf_counter() - started) / (len(steps) - 2), tokens // (len(steps) - 2), first_loss


# --- sweeps ---------------------------------------------------------------------------------------------


def random_rows(n: int, seq: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    rng = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=rng).tolist()
    return [{"input_ids": row, "labels": list(row)} for row in ids]


def sweep(name: str, run_one: Any, sizes: list[int], device: torch.device) -> list[dict[str, Any]]:
    """Run ``run_one(mbs) -> dict`` for growing micro batches until out of memory or slower."""
    rows: list[dict[str, Any]] = []
    for mbs in sizes:
        free_memory()
        try:
            result = run_one(mbs)
        except torch.OutOfMemoryError:
            rows.append({"config": name, "micro_batch": mbs, "oom": True})
            print(f"{name:<34} mbs {mbs:>3}  CUDA out of memory", flush=True)
            break
        finally:
            free_memory()
        rows.append({"config": name, "micro_batch": mbs, **result})
        print(f"{name:<34} mbs {mbs:>3}  {result['tokens_per_s']:>10,.0f} tok/s  {result.get('mfu', 0):6.1%}"
              f"  {result['peak_gib']:6.2f} GiB", flush=True)
        best = max(r["tokens_per_s"] for r in rows if not r.get("oom"))
        if result["tokens_per_s"] < 0.97 * best:
            break
    return rows


def full_length(args: argparse.Namespace, shape: dict[str, Any], device: torch.device, dtype: torch.dtype,
                peak: float) -> list[dict[str, Any]]:
    shape_of_model = model_shape(shape)
    n_params = shape_of_model.parameters
    seq, vocab, steps = args.seq, shape["vocab_size"], args.steps + 2
    results: list[dict[str, Any]] = []

    def describe(seconds: float, tokens: int, mbs: int, kernels: str, method: str, targets: list[str]) -> dict:
        estimate = estimate_memory(shape_of_model, seq, mbs, method=method, kernels=kernels,
                                   target_modules=tuple(targets), feedforward_modules=feedforward)
        return {"tokens_per_s": tokens / seconds, "mfu": 4 * n_params * tokens / seconds / peak,
                "peak_gib": peak_gib(device), "estimate_gib": estimate.total_gib}

    for name in args.methods:
        settings = resolved_targets(shape, METHODS[name])
        targets = settings.get("target_modules", [])
        feedforward = tuple(settings.get("feedforward_modules", ()))
        if "plain" in args.variants:
            def plain(mbs: int) -> dict:
                rows = random_rows(mbs * steps, seq, vocab, seed=mbs)
                batches = [{"input_ids": torch.tensor([r["input_ids"] for r in rows[i * mbs:(i + 1) * mbs]],
                                                      device=device)} for i in range(steps)]
                for batch in batches:
                    batch["labels"] = batch["input_ids"]
                seconds = plain_trial(shape, settings, batches, device, dtype)
                return describe(seconds, mbs * seq, mbs, "plain", settings["method"], targets)
            results += sweep(f"plain {name}", plain, args.plain_sizes, device)

    for variant in [v for v in args.variants if v != "plain"]:
        use_liger, fuse = ENGINE_VARIANTS[variant]
        # The ablations (without Liger, without fused projections) run for the headline configuration only.
        for name in [m for m in args.methods if variant == "engine" or m == "lora-qkvo"]:
            settings = resolved_targets(shape, METHODS[name])
            targets = settings.get("target_modules", [])
            feedforward = tuple(settings.get("feedforward_modules", ()))

            def engine(mbs: int) -> dict:
                setup = engine_setup(shape, settings, device, dtype, use_liger, fuse)
                rows = random_rows(mbs * steps, seq, vocab, seed=mbs)
                config = {"micro_batch_size": mbs, "max_seq_length": seq, "packing": False, "pad_id": 0,
                          "precision": args.precision}
                seconds, tokens, _ = engine_trial(setup, [rows[i * mbs:(i + 1) * mbs] for i in range(steps)],
                                                  config, device)
                # Liger's layer kernels apply to the families it patches (not GPT-NeoX): the estimate follows.
                kernels = "liger" if any(f.startswith("liger rmsnorm") for f in setup[0].features) else "fused"
                row = describe(seconds, tokens, mbs, kernels, settings["method"], targets)
                row["features"] = setup[0].features
                print(f"{variant} {name} mbs {mbs}: {'; '.join(setup[0].features)}", flush=True)
                return row
            results += sweep(f"{variant} {name}", engine, args.engine_sizes, device)
    return results


# --- real lengths ----------------------------------------------------------------------------------------


def squad_like(n: int, vocab: int, max_len: int, seed: int) -> list[dict[str, list[int]]]:
    """Prompt lengths log-normal around 180 tokens (SQuAD v1.1 context + question with a Llama-3
    tokenizer: most a few hundred tokens, a long tail), answers of 1-12 tokens plus EOS."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        prompt = min(max(int(rng.lognormvariate(math.log(180), 0.45)), 24), max_len - 16)
        answer = rng.randint(1, 12) + 1
        ids = [rng.randrange(vocab) for _ in range(prompt + answer)]
        records.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return records


def real_lengths(args: argparse.Namespace, shape: dict[str, Any], device: torch.device,
                 dtype: torch.dtype) -> list[dict[str, Any]]:
    vocab, seq, steps = shape["vocab_size"], args.seq, args.steps + 2
    records = squad_like(args.global_batch * steps, vocab, seq, seed=1)
    mean = sum(len(r["input_ids"]) for r in records) / len(records)
    print(f"real lengths: {len(records)} records, mean {mean:.0f} tokens, longest "
          f"{max(len(r['input_ids']) for r in records)}; global batch {args.global_batch} records", flush=True)
    batches = [records[i * args.global_batch:(i + 1) * args.global_batch] for i in range(steps)]
    results = []
    for packing, sizes in ((False, args.padded_sizes), (True, args.packed_sizes)):
        method = args.methods[0]
        name = f"engine {method} " + ("packed" if packing else "padded to longest")

        def one(mbs: int) -> dict:
            setup = engine_setup(shape, resolved_targets(shape, METHODS[method]), device, dtype, None)
            config = {"micro_batch_size": mbs, "max_seq_length": seq, "packing": packing, "pad_id": 0,
                      "precision": args.precision}
            seconds, tokens, first_loss = engine_trial(setup, batches, config, device)
            return {"tokens_per_s": tokens / seconds, "peak_gib": peak_gib(device), "first_step_loss": first_loss}
        results += sweep(name, one, sizes, device)
    return results


def categorise(kernel: str) -> str:
    """The kind of a GPU kernel, from its name."""
    lowered = kernel.lower()
    for category, keys in (("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "cublas")),
                           ("attention", ("flash", "fmha", "sdpa", "cudnn")),
                           ("optimizer", ("adam", "foreach", "multi_tensor")),
                           ("copies / casts", ("copy", "cast", "fill", "catarray")),
                           ("PyTorch elementwise / reductions", ("at::native", "reduce"))):
        if any(key in lowered for key in keys):
            return category
    return "Triton (Liger) kernels"


def profile(args: argparse.Namespace, shape: dict[str, Any], device: torch.device, dtype: torch.dtype,
            which: str) -> str:
    """Per-op CUDA time of two steps of the plain loop or of the engine (the first of ``--methods``)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    report = []
    seq, vocab, settings = args.seq, shape["vocab_size"], resolved_targets(shape, METHODS[args.methods[0]])
    for label, mbs in (("plain", args.profile[0]), ("engine", args.profile[1])):
        if label != which:
            continue
        free_memory()
        rows = random_rows(mbs * 4, seq, vocab, seed=7)
        if label == "plain":
            from peft import get_peft_model

            from peftpipe.engines.hf.modeling import peft_config
            model = get_peft_model(build_base(shape, device, dtype), peft_config(settings))
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

            def step(chunk: list) -> None:
                ids = torch.tensor([r["input_ids"] for r in chunk], device=device)
                model(input_ids=ids, labels=ids).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            setup = engine_setup(shape, settings, device, dtype, None)
            config = {"micro_batch_size": mbs, "max_seq_length": seq, "packing": False, "pad_id": 0,
                      "precision": args.precision}
            scaler = torch.amp.GradScaler(enabled=False)

            def step(chunk: list) -> None:
                labels = sum(label_tokens(e) for e in chunk)
                accumulate_gradients(setup[0].model, setup[0], chunk, labels, config, 1, scaler, device)
                optimizer_step(setup[1], setup[3], scaler, setup[2])
        step(rows[:mbs])
        step(rows[mbs:2 * mbs])
        sync(device)
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step(rows[2 * mbs:3 * mbs])
            step(rows[3 * mbs:])
            sync(device)
        # Kernels only: the operator rows (aten::mm, ...) repeat their kernels' time.
        kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
                   and not e.key.startswith("Command Buffer")]
        total = sum(e.self_device_time_total for e in kernels)
        by_category: dict[str, float] = {}
        for e in kernels:
            by_category[categorise(e.key)] = by_category.get(categorise(e.key), 0.0) + e.self_device_time_total
        report.append(f"## {label}, micro batch {mbs}: {total / 2e3:.1f} ms of kernel time per step (2 steps profiled)")
        report += [f"- {k}: {v / total:.1%}" for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])]
        report.append(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=70))
        free_memory()
    return "\n".join(report)


def table(rows: list[dict[str, Any]], with_mfu: bool) -> str:
    lines = ["| configuration | micro batch | tokens/s | " + ("MFU(4N) | " if with_mfu else "")
             + "peak memory | estimate | first-step loss |", "|---" * (6 + with_mfu) + "|"]
    for r in rows:
        if r.get("oom"):
            lines.append(f"| {r['config']} | {r['micro_batch']} | CUDA OOM |" + " |" * (3 + with_mfu))
            continue
        estimate = f"{r['estimate_gib']:.1f} GiB ({r['estimate_gib'] / r['peak_gib'] - 1:+.0%})" if "estimate_gib" in r else ""
        loss = f"{r['first_step_loss']:.5f}" if "first_step_loss" in r else ""
        lines.append(f"| {r['config']} | {r['micro_batch']} | {r['tokens_per_s']:,.0f} | "
                     + (f"{r['mfu']:.1%} | " if with_mfu else "") + f"{r['peak_gib']:.1f} GiB | {estimate} | {loss} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, short sequences (checks the script)")
    parser.add_argument("--model", default="llama-1b", choices=list(MODELS), help="the shape (random weights)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per trial (after 2 warm-up steps)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--variants", nargs="+", default=["plain", "engine"],
                        choices=["plain", *ENGINE_VARIANTS])
    parser.add_argument("--plain-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--engine-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--padded-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--packed-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--global-batch", type=int, default=512, help="records per step on real lengths")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--profile", type=int, nargs=2, metavar=("PLAIN_MBS", "ENGINE_MBS"),
                        help="also profile two steps of each (LoRA q/k/v/o) and write per-op tables")
    parser.add_argument("--out", type=Path, help="JSON results (and PROFILE.md beside it with --profile)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = TINY if args.smoke and args.model == "llama-1b" else MODELS[args.model][1]
    if args.smoke:
        args.seq, args.steps, args.global_batch = 128, 1, 32
        args.plain_sizes, args.engine_sizes, args.padded_sizes, args.packed_sizes = [2], [2], [4], [1]
        args.precision = "fp32" if device.type == "cpu" else args.precision
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), PEAK_FLOPS["H100"])
    import peft
    import transformers
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version
        versions["liger_kernel"] = version("liger-kernel")
    except ImportError:
        versions["liger_kernel"] = "not installed"
    print(f"device: {name}; peak {peak / 1e12:.1f} TFLOP/s; {versions}", flush=True)

    # The plain loop is profiled before anything applies Liger's process-wide patches.
    profiled = profile(args, shape, device, dtype, "plain") if args.profile and "plain" in args.variants else ""
    full = full_length(args, shape, device, dtype, peak)
    real = [] if args.skip_real else real_lengths(args, shape, device, dtype)
    if args.profile:
        profiled += "\n\n" + profile(args, shape, device, dtype, "engine")
        print(profiled, flush=True)
        if args.out:
            args.out.with_name("PROFILE.md").write_text(profiled + "\n")
    print("\nfull-length rows (seq {}; labels on every token):\n{}".format(args.seq, table(full, True)))
    if real:
        print("\nreal lengths (answer-only labels; tokens/s counts real tokens, not padding):\n" + table(real, False))
    if args.out:
        args.out.write_text(json.dumps({"device": name, "versions": versions, "argv": sys.argv, "model": args.model,
                                        "full": full,
                                        "real": real}, indent=2))


if __name__ == "__main__":
    main()
