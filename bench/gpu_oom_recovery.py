"""A real CUDA OOM and its recovery on one GPU, through the pipeline's own core (no Prefect).

    python3 bench/gpu_oom_recovery.py --out $OUT [--start-mbs 64] [--steps 6]

Builds a Llama-architecture model of about 1.2B parameters with random weights (Llama-3.2-1B
shape: hidden 2048, 16 layers, 32 heads, 8 KV heads, vocabulary 128,256, tied embeddings),
long synthetic SQuAD-like records (sequence length 2048), and runs the fine-tune stage with the
local backend and the retry loop from a micro batch that does not fit. No fault injection:
the OOMs are CUDA's own. Writes attempts.json, the run's metrics and a markdown summary to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftpipe.attempts import AttemptRecord, first_attempt, run_attempts  # noqa: E402
from peftpipe.backends import LocalBackend  # noqa: E402
from peftpipe.failures import fatal_line  # noqa: E402
from peftpipe.paths import RunPaths  # noqa: E402
from peftpipe.preflight import choose_micro_batch, gpu_memory_gib, memory_estimator  # noqa: E402
from peftpipe.engines.hf.stages import finetune_stage  # noqa: E402
from peftpipe.stages import prepare_stage  # noqa: E402
from peftpipe.validation import load_spec  # noqa: E402

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=4096)
WORDS = ("the model was trained on a corpus of scientific abstracts and questions about proteins cells genes "
         "cluster memory batch gradient accumulation checkpoint adapter rank alpha dropout").split()


SMOKE = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True, max_position_embeddings=4096)


def build_model(directory: Path, shape: dict, device: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftpipe.tiny_model import build_tiny_llama

    tokenizer_dir = directory.parent / "tokenizer-source"
    build_tiny_llama(tokenizer_dir, [" ".join(WORDS)] * 50)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, directory / name)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return parameters


def write_records(path: Path, count: int) -> None:
    rng = random.Random(0)
    with path.open("w") as out:
        for index in range(count):
            context = " ".join(rng.choice(WORDS) for _ in range(3000))  # well past 2048 tokens
            answer = " ".join(rng.choice(WORDS) for _ in range(3))
            out.write(json.dumps({"input": f"Context: {context}\nQuestion: what is item {index}?",
                                  "output": answer}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--start-mbs", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-oom"))
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU, to check the script")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    import torch

    started = time.monotonic()
    device = "cpu" if args.cpu_smoke else "cuda"
    parameters = build_model(args.work / "model", SMOKE if args.cpu_smoke else LLAMA_1B, device)
    write_records(args.work / "records.jsonl", 400)
    spec_file = args.work / "spec.yaml"
    spec_file.write_text(json.dumps({
        "name": "gpu-oom",
        "model": {"path": str(args.work / "model")},
        "dataset": {"format": "jsonl", "path": str(args.work / "records.jsonl"),
                    "split": {"validation": 0.05, "test": 0.05}, "prompt_template": "{input}\nAnswer: {output}"},
        "peft": {"method": "lora", "lora": {"r": 16, "alpha": 32,
                                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        "train": {"global_batch_size": args.global_batch, "micro_batch_size": args.start_mbs,
                  "max_steps": args.steps, "checkpoint_every": 2, "max_seq_length": 256 if args.cpu_smoke else 2048,
                  "precision": "fp32" if args.cpu_smoke else "bf16",
                  "learning_rate": 1e-4, "max_attempts": 8,
                  # Start where the user said, to show a real OOM; the preflight's pick is reported.
                  "preflight": False},
        "workdir": str(args.work / "runs"),
    }))
    loaded = load_spec(spec_file)
    paths = RunPaths(args.work / "runs" / "gpu-oom")
    prepare_stage(loaded, paths)
    setup_s = time.monotonic() - started

    def run_one(settings):
        return finetune_stage(loaded, paths, loaded.resolve(loaded.spec.model.path), settings,
                              on_line=lambda line: print(line, flush=True), backend=LocalBackend(),
                              stop_rule=fatal_line)

    table: list[AttemptRecord] = []

    def keep(records: list[AttemptRecord]) -> None:
        table[:] = records

    config = json.loads((args.work / "model" / "config.json").read_text())
    estimator = memory_estimator(loaded.spec, config)
    gpu_gib = gpu_memory_gib(loaded.spec)
    advice = choose_micro_batch(loaded.spec, config, gpu_gib).describe() if gpu_gib else "no GPU"
    print(advice, flush=True)
    result = run_attempts(loaded.spec, first_attempt(loaded.spec), run_one, on_records=keep, estimate_gib=estimator)
    metrics = [json.loads(line) for line in paths.train_metrics_file.read_text().splitlines()]
    summary = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "parameters": parameters,
        "setup_s": round(setup_s, 1),
        "preflight_would_choose": advice,
        "attempts": [record.as_row() for record in table],
        "final_step": result.final_step,
        "final_loss": result.final_loss,
        "resumed_from_step": result.resumed_from_step,
        "micro_batch_size": result.micro_batch_size,
        "peak_memory_gib_per_step": [m.get("peak_memory_gib") for m in metrics],
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if device == "cuda" else None,
        "total_s": round(time.monotonic() - started, 1),
    }
    (args.out / "gpu_oom_recovery.json").write_text(json.dumps(summary, indent=2) + "\n")
    for attempt_dir in sorted((paths.root / "finetune").glob("attempt-*")):
        shutil.copy(attempt_dir / "output.log", args.out / f"finetune-{attempt_dir.name}.log")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
