"""Fine-tune a causal LM with a PEFT method (transformers + peft), resumably.

Run as ``python -m peftpipe.engines.hf.train --config CONFIG.json`` (or under ``torchrun``);
the config is written by :func:`peftpipe.engines.hf.command.training_config`. The same script
runs locally and inside a Slurm job, unchanged.

Features:
- LoRA (explicit target modules), IA3 and p-tuning (peft's prompt encoder).
- Answer-only loss over NeMo-style records: the prompt template is rendered without its final
  ``{output}``; only the output tokens (and EOS) are labels.
- Gradient accumulation = global_batch_size / (micro_batch_size x world size). Samples are
  drawn from a seeded stream by global step, and the loss of every micro batch is divided by
  the label-token count of the whole global batch, so the optimisation is the same whatever
  the micro batch size or the number of ranks.
- Batches padded to their longest sample; SDPA attention; bf16 autocast on GPUs that support it.
- Checkpoints (adapter, optimizer, scheduler, RNG) every ``checkpoint_every`` steps, written
  atomically; a restart in the same output directory resumes from the latest one. SIGTERM /
  SIGUSR1 (Slurm's ``--signal``) save a checkpoint at the end of the current step and exit.
- Per-step metrics as JSONL: loss, learning rate, tokens/s, peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
IGNORE_INDEX = -100


# --- records into token ids ---------------------------------------------------------------------


def prompt_prefix(template: str) -> str:
    """The template up to its final ``{output}``: what the model sees before the answer."""
    return template[: template.rindex("{output}")]


def encode_record(record: dict[str, Any], template: str, tokenizer: Any, max_seq_length: int) -> dict[str, list[int]]:
    """Token ids and labels for one record; the prompt is cut from the left if too long."""
    prompt_ids = tokenizer(prompt_prefix(template).format(**record), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer_ids = answer_ids[: max_seq_length - 1]
    prompt_ids = truncate_prompt(prompt_ids, max_seq_length - len(answer_ids), tokenizer.bos_token_id)
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def truncate_prompt(ids: list[int], budget: int, bos_id: int | None) -> list[int]:
    """Cut a too-long prompt from the left (keeping BOS): the question sits at its end."""
    if len(ids) <= budget:
        return ids
    keep_bos = ids[:1] if ids and ids[0] == bos_id else []
    return keep_bos + ids[len(ids) - (budget - len(keep_bos)) :]


def read_records(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def collate(examples: list[dict[str, list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch."""
    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def label_tokens(example: dict[str, list[int]]) -> int:
    # Causal LMs predict token t+1 from t, so the first position's label is never scored.
    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


def global_batch_indices(step: int, global_batch_size: int, n_samples: int, seed: int) -> list[int]:
    """Sample indices of optimizer step ``step`` (0-based) from a seeded, epoch-wise shuffled stream."""
    indices: list[int] = []
    position = step * global_batch_size
    while len(indices) < global_batch_size:
        epoch, offset = divmod(position, n_samples)
        order = list(range(n_samples))
        random.Random(seed + epoch).shuffle(order)
        take = min(global_batch_size - len(indices), n_samples - offset)
        indices += order[offset : offset + take]
        position += take
    return indices


def quiet_libraries() -> None:
    """Keep job logs to what a person reads: no progress bars, no deprecation chatter."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()


# --- model ----------------------------------------------------------------------------------------


def resolve_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_base_model(model_path: str, precision: str, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[precision], attn_implementation="sdpa")
    return model.to(device)


def peft_config(peft: dict[str, Any]) -> Any:
    from peft import IA3Config, LoraConfig, PromptEncoderConfig, TaskType

    method = peft["method"]
    if method == "lora":
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=peft["r"],
            lora_alpha=peft["alpha"],
            lora_dropout=peft["dropout"],
            target_modules=peft["target_modules"],
        )
    if method == "ia3":
        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=peft["target_modules"],
            feedforward_modules=peft["feedforward_modules"],
        )
    if method == "ptuning":
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=peft["num_virtual_tokens"],
            encoder_hidden_size=peft["encoder_hidden_size"],
        )
    raise ValueError(f"peft method {method!r} is not supported by the hf engine")


def autocast(device: torch.device, precision: str) -> Any:
    enabled = precision in ("bf16", "fp16")
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision], enabled=enabled)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


# --- distributed ------------------------------------------------------------------------------------


def adopt_slurm_ranks(env: dict[str, str]) -> None:
    """Under ``srun`` with one task per GPU there is no torchrun: take the ranks from Slurm."""
    if "RANK" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]


def init_distributed() -> tuple[int, int, torch.device]:
    adopt_slurm_ranks(os.environ)  # type: ignore[arg-type]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_reduce_sum(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())


# --- checkpoints ------------------------------------------------------------------------------------


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    complete = [p for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.pt").is_file()]
    return max(complete, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), default=None)


def save_checkpoint(checkpoint_dir: Path, step: int, peft_model: Any, optimizer: Any, scheduler: Any) -> Path:
    """Write to a temporary directory and rename it, so a killed job never leaves half a checkpoint."""
    from peft import get_peft_model_state_dict

    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
    partial = checkpoint_dir / f".partial-{final.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    state = {
        "step": step,
        "adapter": get_peft_model_state_dict(peft_model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    torch.save(state, partial / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in sorted(checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, peft_model: Any, optimizer: Any, scheduler: Any) -> int:
    from peft import set_peft_model_state_dict

    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    set_peft_model_state_dict(peft_model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["step"])


def truncate_metrics(metrics_path: Path, last_step: int) -> None:
    """Drop metric lines beyond the checkpoint a restarted run resumes from."""
    if not metrics_path.exists():
        return
    kept = [line for line in metrics_path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
    metrics_path.write_text("".join(line + "\n" for line in kept))


# --- training -------------------------------------------------------------------------------------------


def masked_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum (not mean) of token losses, so batches of any split add up to the same total."""
    labels = batch["labels"]
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = outputs.logits
    # p-tuning prepends virtual tokens to the logits; the labels align with the last positions.
    logits = logits[:, -labels.shape[1] :, :]
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@torch.no_grad()
def mean_loss(model: Any, examples: list[dict[str, list[int]]], batch_size: int, pad_id: int, device: torch.device,
              precision: str) -> float | None:
    """Answer-token mean loss over ``examples``."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        with autocast(device, precision):
            total += float(masked_loss_sum(model, collate(chunk, pad_id, device)))
        tokens += sum(label_tokens(e) for e in chunk)
    model.train(was_training)
    return total / max(tokens, 1)


def injected_oom(micro_batch_size: int, step: int) -> None:
    """Test-only fault injection, off unless PEFTPIPE_FAULT_OOM_ABOVE_MBS is set: a CUDA-style
    OOM when the micro batch exceeds that size (from step PEFTPIPE_FAULT_OOM_FROM_STEP on), so
    the retry path can be exercised on machines without a GPU."""
    limit = os.environ.get("PEFTPIPE_FAULT_OOM_ABOVE_MBS")
    if limit and micro_batch_size > int(limit) and step >= int(os.environ.get("PEFTPIPE_FAULT_OOM_FROM_STEP", "0")):
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB (injected: micro batch {micro_batch_size} > {limit})"
        )


class StopRequested:
    """Set by SIGTERM / SIGUSR1 so the loop can checkpoint before the job is killed."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum


def train(config: dict[str, Any]) -> dict[str, Any]:
    from peft import get_peft_model
    from transformers import AutoTokenizer, get_scheduler

    rank, world, device = init_distributed()
    torch.manual_seed(config["seed"])
    random.seed(config["seed"])
    output_dir = Path(config["output_dir"])
    checkpoint_dir = output_dir / "checkpoints"
    metrics_path = output_dir / "metrics.jsonl"
    if rank == 0:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(config["precision"])

    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    template, max_len = config["prompt_template"], config["max_seq_length"]
    train_examples = [encode_record(r, template, tokenizer, max_len) for r in read_records(config["train_file"])]
    val_examples = (
        [encode_record(r, template, tokenizer, max_len) for r in read_records(config["validation_file"])]
        if config.get("validation_file")
        else []
    )

    base = load_base_model(config["model_path"], precision, device)
    if config["activation_checkpointing"]:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    model = get_peft_model(base, peft_config(config["peft"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(
        trainable, lr=config["learning_rate"], weight_decay=config["weight_decay"], fused=device.type == "cuda"
    )
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[config["lr_schedule"]]
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=config["warmup_steps"], num_training_steps=config["max_steps"]
    )

    start_step, resumed_from = 0, None
    latest = latest_checkpoint(checkpoint_dir)
    if latest is not None:
        start_step = load_checkpoint(latest, model, optimizer, scheduler)
        resumed_from = start_step
        if rank == 0:
            truncate_metrics(metrics_path, start_step)
            print(f"resuming from checkpoint {latest.name} (step {start_step})", flush=True)

    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    gbs, mbs = config["global_batch_size"], config["micro_batch_size"]
    per_rank = gbs // world
    accumulation = per_rank // mbs
    max_steps = config["max_steps"]
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")
    stop = StopRequested()
    if rank == 0:
        print(
            f"training {config['peft']['method']} ({n_trainable:,} trainable parameters) on {len(train_examples)} records:"
            f" global batch {gbs} = micro batch {mbs} x accumulation {accumulation} x ranks {world};"
            f" precision {precision}; device {device.type}",
            flush=True,
        )

    wrapped.train()
    step = start_step
    run_started = time.perf_counter()
    loss_value = float("nan")
    while step < max_steps:
        step_started = time.perf_counter()
        batch_examples = [train_examples[i] for i in global_batch_indices(step, gbs, len(train_examples), config["seed"])]
        batch_label_tokens = sum(label_tokens(e) for e in batch_examples)
        mine = batch_examples[rank * per_rank : (rank + 1) * per_rank]
        loss_sum, tokens_seen = 0.0, 0
        for micro in range(accumulation):
            chunk = mine[micro * mbs : (micro + 1) * mbs]
            injected_oom(mbs, step)
            batch = collate(chunk, pad_id, device)
            tokens_seen += int(batch["attention_mask"].sum())
            sync = micro == accumulation - 1 or world == 1
            context = wrapped.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with context:
                with autocast(device, precision):
                    micro_loss = masked_loss_sum(wrapped, batch)
                # DDP averages gradients over ranks, hence x world: the result is sum / batch_label_tokens.
                scaler.scale(micro_loss * world / batch_label_tokens).backward()
            loss_sum += float(micro_loss.detach())
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        scaler.step(optimizer)
        scaler.update()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = all_reduce_sum(loss_sum, world, device) / batch_label_tokens
        tokens_total = all_reduce_sum(tokens_seen, world, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - step_started
        record: dict[str, Any] = {
            "step": step,
            "loss": round(loss_value, 6),
            "lr": lr,
            "tokens_per_s": round(tokens_total / elapsed, 1),
            "step_time_s": round(elapsed, 4),
            "peak_memory_gib": round(peak_memory_gib(device), 4),
            "micro_batch_size": mbs,
            "gradient_accumulation": accumulation,
        }
        checkpoint_now = step % config["checkpoint_every"] == 0 or step == max_steps or stop.signal is not None
        if checkpoint_now and val_examples:
            record["val_loss"] = round(mean_loss(model, val_examples, mbs, pad_id, device, precision), 6)
        if rank == 0:
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"step {step}/{max_steps} loss {loss_value:.4f} lr {lr:.3g} {record['tokens_per_s']:.0f} tok/s"
                f" peak {record['peak_memory_gib']:.2f} GiB" + (f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else ""),
                flush=True,
            )
        if checkpoint_now:
            if rank == 0:
                saved = save_checkpoint(checkpoint_dir, step, model, optimizer, scheduler)
                print(f"checkpoint saved: {saved.name}", flush=True)
            if world > 1:
                torch.distributed.barrier()
        if stop.signal is not None and step < max_steps:
            print(f"stopping at step {step} on signal {stop.signal}; the next run resumes here", flush=True)
            sys.exit(128 + stop.signal)

    summary = {
        "final_step": step,
        "final_loss": loss_value,
        "resumed_from_step": resumed_from,
        "trainable_parameters": n_trainable,
        "precision": precision,
        "world_size": world,
        "wall_time_s": round(time.perf_counter() - run_started, 2),
        "peak_memory_gib": round(peak_memory_gib(device), 4),
    }
    if rank == 0:
        model.save_pretrained(output_dir / "adapter")
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"training finished at step {step}; adapter saved to {output_dir / 'adapter'}", flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()
    return summary


def script_main(run: Any, description: str, argv: list[str] | None = None) -> None:
    """The command line shared by the engine's scripts: ``--config CONFIG.json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="JSON file written by peftpipe")
    args = parser.parse_args(argv)
    injected_exit = os.environ.get("PEFTPIPE_FAULT_EXIT_CODE")  # test-only, off unless set
    if injected_exit:
        print(f"injected failure: exiting with code {injected_exit}", flush=True)
        sys.exit(int(injected_exit))
    quiet_libraries()
    run(json.loads(Path(args.config).read_text()))


if __name__ == "__main__":
    script_main(train, __doc__.splitlines()[0])
