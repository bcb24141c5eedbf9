"""NeMo AutoModel's LoRA training throughput, through the automodel engine's rendered YAML.

    python bench/automodel_throughput.py --out automodel.json     # on a GPU, with nemo-automodel importable
    python bench/automodel_throughput.py --smoke                  # on a CPU: a tiny model, to check the script

The counterpart of ``bench/train_throughput.py`` (hf engine and plain loop) for ``engine: automodel``:
the same Llama-3.2-1B shape with random weights (no download), bf16, LoRA r16 alpha 32 on q/k/v/o,
sequences of 2048 tokens with labels on every token, one optimizer step per micro batch. The YAML is
``peftpipe.engines.automodel.config.automodel_config`` of a run spec with those settings; the only
override is the dataset: AutoModel's own mock dataset (``components/datasets/llm/mock.py``) of
full-length rows instead of a JSONL file. Each micro batch is one ``torchrun`` of AutoModel through
the engine's launcher (which changes nothing where CUDA is present).

Tokens/s is AutoModel's own ``tps`` (non-padding tokens of a step / wall time between steps), the
mean over the steps after the first two; MFU(4N) = 4 * N * tokens/s / peak bf16 dense FLOP/s, N = all
parameters; peak memory is AutoModel's ``mem`` (``torch.cuda.max_memory_allocated``).
Not part of the test suite: timings never decide a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftpipe.engines.automodel.config import AutomodelInputs, automodel_config, render_yaml  # noqa: E402
from peftpipe.spec import RunSpec  # noqa: E402

LAUNCHER = REPO / "peftpipe" / "engines" / "automodel" / "launcher.py"
# The shapes and peak of bench/train_throughput.py (not imported: that module needs peft, which
# AutoModel's environment does not have).
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "vocab_size": 128256, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 8192, "tie_word_embeddings": True}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 176, "tie_word_embeddings": True}
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
STEP_LINE = re.compile(r"\| step (\d+) \| epoch \d+ \| loss ([-0-9.na]+) .*\| mem ([0-9.]+) GiB \| tps ([0-9.]+)")


def build_model(shape: dict[str, Any], directory: Path, dtype: Any) -> int:
    """A random-weight Llama of ``shape`` with a small tokenizer, saved for AutoModel; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftpipe.tiny_model import build_tiny_llama

    tokenizer_source = directory.parent / "tokenizer-source"
    build_tiny_llama(tokenizer_source, ["a tokenizer only: the mock dataset brings its own token ids"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=8192)).to(dtype)
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_source / name).exists():
            (directory / name).write_bytes((tokenizer_source / name).read_bytes())
    return sum(p.numel() for p in model.parameters())


def mock_rows(count: int, seq: int, vocab: int) -> dict[str, Any]:
    """AutoModel's mock dataset: ``count`` rows of exactly ``seq`` tokens (seq - 1 random ids + EOS)."""
    return {"_target_": "nemo_automodel.components.datasets.llm.mock.build_unpacked_dataset", "num_sentences": count,
            "mean_len": seq - 1, "std_len": 0.0, "max_sentence_len": seq - 1, "vocab_size": vocab, "seed": 0}


def run_spec(args: argparse.Namespace, shape: dict[str, Any], mbs: int, device: str) -> RunSpec:
    rows = mbs * (args.steps + 2)
    return RunSpec.model_validate({
        "name": "automodel-bench", "model": {"path": "unused"}, "dataset": {"format": "jsonl", "path": "unused"},
        "engine": "automodel",
        "peft": {"method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0,
                                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        "train": {"global_batch_size": mbs, "micro_batch_size": mbs, "max_steps": args.steps + 2,
                  "max_seq_length": args.seq, "precision": args.precision, "learning_rate": 1e-4,
                  "lr_schedule": "constant", "checkpoint_every": args.steps + 2},
        "automodel": {"device": device, "strategy": args.strategy, "overrides": {
            "dataset": mock_rows(rows, args.seq, shape["vocab_size"]),
            "validation_dataset": mock_rows(mbs, args.seq, shape["vocab_size"]),
            # Timing only: no checkpoint of the 1B model is written.
            "checkpoint.enabled": False}},
    })


def one_size(args: argparse.Namespace, shape: dict[str, Any], mbs: int, model_dir: Path, device: str,
             n_params: int, peak: float) -> dict[str, Any]:
    work = args.workdir / f"mbs{mbs}"
    work.mkdir(parents=True, exist_ok=True)
    spec = run_spec(args, shape, mbs, device)
    inputs = AutomodelInputs(model_dir, work / "unused.jsonl", work / "unused.jsonl", work / "checkpoints")
    config_file = work / "automodel.yaml"
    config_file.write_text(render_yaml(automodel_config(spec, inputs, mbs)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(LAUNCHER),
               str(config_file)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    log = work / "output.log"
    with log.open("w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    text = log.read_text(errors="replace")
    row: dict[str, Any] = {"config": f"automodel {args.strategy}, LoRA r16 q/k/v/o", "micro_batch": mbs,
                           "command": command, "exit_code": result.returncode}
    if result.returncode != 0:
        row["oom"] = "out of memory" in text
        row["log_tail"] = text[-3000:]
        print(f"micro batch {mbs}: exit {result.returncode}\n{text[-3000:]}", flush=True)
        return row
    steps = [(int(s), float(loss), float(mem), float(tps)) for s, loss, mem, tps in STEP_LINE.findall(text)]
    timed = [tps for step, _, _, tps in steps if step >= 2]
    tokens_per_s = sum(timed) / len(timed)
    row.update({"tokens_per_s": tokens_per_s, "mfu": 4 * n_params * tokens_per_s / peak,
                "peak_gib": max(mem for _, _, mem, _ in steps), "first_step_loss": steps[0][1],
                "steps": [{"step": s, "loss": loss, "mem_gib": mem, "tps": tps} for s, loss, mem, tps in steps]})
    print(f"micro batch {mbs}: {tokens_per_s:,.0f} tokens/s, MFU(4N) {row['mfu']:.1%}, peak {row['peak_gib']:.1f} GiB",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, short sequences (checks the script)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per micro batch (after 2 warm-up steps)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--strategy", default="fsdp2", choices=["fsdp2", "ddp"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/automodel-bench"))
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    shape = TINY if args.smoke else LLAMA_1B
    if args.smoke:
        args.seq, args.steps, args.sizes = 64, 1, [2]
        args.precision = "fp32" if not cuda else args.precision
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), PEAK_FLOPS["H100"])
    import nemo_automodel
    import transformers
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "nemo_automodel": nemo_automodel.__version__}
    print(f"device: {name}; peak {peak / 1e12:.1f} TFLOP/s; {versions}", flush=True)
    model_dir = args.workdir / "model"
    n_params = build_model(shape, model_dir, dtype)
    rows = []
    for mbs in args.sizes:
        rows.append(one_size(args, shape, mbs, model_dir, "cuda" if cuda else "cpu", n_params, peak))
        if rows[-1]["exit_code"] != 0:
            break
    print("\n| configuration | micro batch | tokens/s | MFU(4N) | peak memory |\n|---|---|---|---|---|")
    for r in rows:
        if r["exit_code"] != 0:
            print(f"| {r['config']} | {r['micro_batch']} | {'CUDA OOM' if r.get('oom') else 'failed'} | | |")
        else:
            print(f"| {r['config']} | {r['micro_batch']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} |"
                  f" {r['peak_gib']:.1f} GiB |")
    if args.out:
        args.out.write_text(json.dumps({"device": name, "versions": versions, "argv": sys.argv, "parameters": n_params,
                                        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
