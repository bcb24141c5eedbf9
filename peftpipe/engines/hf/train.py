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
- Packing (``packing``): the records of a global batch share rows of ``max_seq_length`` tokens
  without attending across records (``packing.py``); otherwise batches are padded to their
  longest record. bf16 on GPUs that support it, with the fast paths of ``modeling.py`` (flash
  attention, the output projection fused with the loss at label positions only, projections
  of one input computed together with LoRA folded into the base GEMMs, Liger's kernels when
  installed).
- Checkpoints (adapter, optimizer, scheduler, RNG) every ``checkpoint_every`` steps, written
  atomically; a restart in the same output directory resumes from the latest one. SIGTERM /
  SIGUSR1 (Slurm's ``--signal``) save a checkpoint at the end of the current step and exit.
- Per-step metrics as JSONL: loss, learning rate, tokens/s, peak memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from peftpipe.engines.hf.modeling import (
    Prepared,
    autocast,
    load_base_model,
    loss_sum,
    mean_loss,
    prepare_model,
    resolve_precision,
)
from peftpipe.engines.hf.checkpoints import latest_intact_state, restore_training_state, save_checkpoint
from peftpipe.engines.hf.offload import HostOffload
from peftpipe.engines.hf.sharding import (
    full,
    full_adapter_state,
    full_optimizer_state,
    gradient_sync,
    shard_model,
    shard_optimizer_state,
)
from peftpipe.engines.hf.packing import collate, label_tokens, plan_micro_batches
from peftpipe.engines.hf.script_common import encode_record, read_records, script_main


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


# --- measurement ----------------------------------------------------------------------------------


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


def env_gpu_memory_cap_gib() -> float | None:
    """Bench-only, off unless PEFTPIPE_GPU_MEMORY_CAP_GIB is set: cap this process's CUDA allocator, as
    on a smaller GPU, so that bench/memory_ladder.py meets real CUDA OOMs on a large one."""
    cap = os.environ.get("PEFTPIPE_GPU_MEMORY_CAP_GIB")
    return float(cap) if cap else None


def init_distributed() -> tuple[int, int, torch.device]:
    adopt_slurm_ranks(os.environ)  # type: ignore[arg-type]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        cap = env_gpu_memory_cap_gib()
        if cap is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(cap * 2**30 / total, 1.0), device)
    else:
        device = torch.device("cpu")
    if world > 1:
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_reduce_sum(value: float | torch.Tensor, world: int, device: torch.device) -> float:
    """The sum over ranks, read back to the host: the one device sync of a training step."""
    if world == 1:
        return float(value)
    tensor = torch.as_tensor(value, dtype=torch.float64, device=device).reshape(1).clone()
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())


# --- checkpoints ------------------------------------------------------------------------------------


def recorded_loss(metrics_path: Path, step: int) -> float | None:
    """The loss metrics.jsonl holds for ``step`` (None when it has none)."""
    if not metrics_path.exists():
        return None
    for line in reversed(metrics_path.read_text().splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if record.get("step") == step and isinstance(record.get("loss"), (int, float)):
                return float(record["loss"])
    return None


def sort_adapter_config(path: Path) -> None:
    """peft writes target_modules (a set) in hash order: sort lists so the file is the same every save."""
    config = json.loads(path.read_text())
    for key, value in config.items():
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            config[key] = sorted(value)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def truncate_metrics(metrics_path: Path, last_step: int) -> None:
    """Drop metric lines beyond the checkpoint a restarted run resumes from."""
    if not metrics_path.exists():
        return
    kept = [line for line in metrics_path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
    metrics_path.write_text("".join(line + "\n" for line in kept))


# --- training -------------------------------------------------------------------------------------------


def injected_nan_weights(trainable: list[torch.nn.Parameter], step: int) -> None:
    """Test-only fault injection, off unless PEFTPIPE_FAULT_NAN_AT_STEP is set: one adapter weight
    becomes NaN before that step, so the forward pass yields a non-finite loss as a divergence does."""
    at = os.environ.get("PEFTPIPE_FAULT_NAN_AT_STEP")
    if at and step + 1 == int(at):
        with torch.no_grad():
            trainable[0].view(-1)[0] = float("nan")


def injected_oom(micro_batch_size: int, step: int) -> None:
    """Test-only fault injection, off unless PEFTPIPE_FAULT_OOM_ABOVE_MBS is set: a CUDA-style
    OOM when the micro batch exceeds that size (from step PEFTPIPE_FAULT_OOM_FROM_STEP on), so
    the retry path can be exercised on machines without a GPU. PEFTPIPE_FAULT_OOM_RANK limits it
    to one rank, as when one GPU of several runs out first."""
    limit = os.environ.get("PEFTPIPE_FAULT_OOM_ABOVE_MBS")
    only_rank = os.environ.get("PEFTPIPE_FAULT_OOM_RANK")
    if only_rank is not None and os.environ.get("RANK", "0") != only_rank:
        return
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


def make_optimizer(trainable: list[torch.nn.Parameter], config: dict[str, Any], device: torch.device) -> Any:
    # The fused (single-kernel) AdamW on GPUs: one launch for all adapter tensors instead of several each.
    return torch.optim.AdamW(trainable, lr=config["learning_rate"], weight_decay=config["weight_decay"],
                             fused=device.type == "cuda")


def accumulate_gradients(wrapped: Any, prepared: Prepared, examples: list[dict[str, list[int]]],
                         batch_label_tokens: int, settings: dict[str, Any], world: int, scaler: Any,
                         device: torch.device, step: int = 0) -> tuple[torch.Tensor, int, int]:
    """Forward and backward over this rank's share of one global batch, micro batch by micro batch.

    ``settings``: micro_batch_size, max_seq_length, packing, pad_id, precision, and optionally offload (a
    :class:`HostOffload` whose hooks wrap each forward pass: the memory ladder's offload rung). Returns the loss
    sum (on the device: reading it would stall the GPU queue), the real tokens and the number of
    micro batches. With packing, ranks may run different numbers of micro batches: gradients
    synchronise only in each rank's last backward, so the counts need not match.
    """
    packing = settings["packing"]
    offload = settings.get("offload")
    plan = plan_micro_batches(examples, settings["micro_batch_size"], settings["max_seq_length"], packing)
    loss_total = torch.zeros((), dtype=torch.float32, device=device)
    tokens = 0
    for micro, rows in enumerate(plan):
        injected_oom(settings["micro_batch_size"], step)
        batch = collate(examples, rows, settings["pad_id"], device, packed=packing)
        tokens += batch["tokens"]
        last = micro == len(plan) - 1
        with gradient_sync(wrapped, world, last):
            with autocast(device, settings["precision"]), (offload.hooks() if offload else contextlib.nullcontext()):
                micro_loss = loss_sum(wrapped, batch, prepared.head_weight, prepared.use_liger)
            # DDP averages gradients over ranks, hence x world: the result is sum / batch_label_tokens.
            scaler.scale(micro_loss * world / batch_label_tokens).backward()
        loss_total += micro_loss.detach()
    return loss_total, tokens, len(plan)


def optimizer_step(optimizer: Any, scheduler: Any, scaler: Any, trainable: list[torch.nn.Parameter]) -> float:
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    scaler.step(optimizer)
    scaler.update()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


def train(config: dict[str, Any]) -> dict[str, Any]:
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

    # The shard rung (FSDP2): peft's own projection forward, which reads the gathered weights each call.
    shard = bool(config.get("shard")) and world > 1
    quantize_base = bool(config.get("quantize_base"))
    if quantize_base and shard:
        raise ValueError("quantize_base is not combined with shard: FSDP2 does not shard packed 4-bit weights")
    # Sharded, the whole model never sits on one GPU: it loads in host memory and fully_shard moves each
    # layer's shard to the GPU as it shards it.
    base = load_base_model(config["model_path"], precision, torch.device("cpu") if shard else device, quantize_base)
    prepared = prepare_model(base, config["peft"], device, config["activation_checkpointing"], fuse=not shard)
    model = prepared.model
    if quantize_base:
        prepared.features.append("base weights in 4 bits (NF4, double quantization, bitsandbytes); LoRA in"
                                 f" {precision}")
    found = latest_intact_state(checkpoint_dir, say=lambda line: print(line, flush=True) if rank == 0 else None)
    if found is not None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, found[1]["adapter"])  # before sharding: the full adapter
    if shard:
        units = shard_model(model, device, world)
        if prepared.head_weight is not None:  # the detached output projection is no longer in the model
            prepared.head_weight = prepared.head_weight.to(device)
        prepared.features.append(f"parameters sharded over {world} ranks (FSDP2, {units} decoder layers + root)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = make_optimizer(trainable, config, device)
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[config["lr_schedule"]]
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=config["warmup_steps"], num_training_steps=config["max_steps"]
    )

    start_step, resumed_from = 0, None
    if found is not None:
        latest, state = found
        start_step = restore_training_state(state, optimizer, scheduler,
                                            shard_optimizer_state(state["optimizer"], trainable) if shard else None)
        resumed_from = start_step
        if rank == 0:
            truncate_metrics(metrics_path, start_step)
            print(f"resuming from checkpoint {latest.name} (step {start_step})", flush=True)

    wrapped = model
    if world > 1 and not shard:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    gbs, mbs = config["global_batch_size"], config["micro_batch_size"]
    per_rank = gbs // world
    # p-tuning prepends its virtual tokens to every row, so records cannot share one.
    packing = bool(config.get("packing")) and config["peft"]["method"] != "ptuning"
    if packing and not prepared.packing_supported and rank == 0:
        print(f"packing is off for {prepared.layout.architecture}: its attention cannot keep packed records"
              " apart; micro batches are padded instead", flush=True)
    packing = packing and prepared.packing_supported
    if packing and shard:
        packing = False  # every rank must run as many micro batches (each gathers parameters collectively)
        if rank == 0:
            print("packing is off while sharding: ranks pad their micro batches so that they run as many", flush=True)
    settings = {"micro_batch_size": mbs, "max_seq_length": max_len, "packing": packing, "pad_id": pad_id,
                "precision": precision}
    if config.get("offload_activations"):
        if not config["activation_checkpointing"]:
            raise ValueError("offload_activations moves checkpointed activations: it needs activation_checkpointing")
        settings["offload"] = HostOffload(model, device)
        prepared.features.append("checkpointed activations offloaded to pinned host memory (side-stream copies)")
    max_steps = config["max_steps"]
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")
    stop = StopRequested()
    if rank == 0:
        layout = (f"packed: up to {mbs} rows of {max_len} tokens a micro batch" if packing
                  else "padded to the longest record of each micro batch")
        print(
            f"training {config['peft']['method']} ({n_trainable:,} trainable parameters) on {len(train_examples)} records:"
            f" global batch {gbs} = micro batch {mbs} x accumulation {per_rank // mbs} x ranks {world};"
            f" {layout}; precision {precision}; device {device.type}\n"
            f"model: {prepared.layout.describe()}\n"
            + (f"target modules ({'auto' if config['peft'].get('target_modules') == 'auto' else 'spec'}):"
               f" {', '.join(prepared.peft['target_modules'])}\n" if "target_modules" in prepared.peft else "")
            + f"fast paths: {'; '.join(prepared.features)}",
            flush=True,
        )

    wrapped.train()
    step = start_step
    run_started = time.perf_counter()
    # Resumed at max_steps: no step runs here, the loss is the one recorded for that step.
    loss_value = recorded_loss(metrics_path, step)
    while step < max_steps:
        step_started = time.perf_counter()
        batch_examples = [train_examples[i] for i in global_batch_indices(step, gbs, len(train_examples), config["seed"])]
        batch_label_tokens = sum(label_tokens(e) for e in batch_examples)
        injected_nan_weights(trainable, step)
        mine = batch_examples[rank * per_rank : (rank + 1) * per_rank]
        loss_total, tokens_seen, n_micro = accumulate_gradients(
            wrapped, prepared, mine, batch_label_tokens, settings, world, scaler, device, step)
        lr = optimizer_step(optimizer, scheduler, scaler, trainable)
        step += 1
        loss_value = all_reduce_sum(loss_total, world, device) / batch_label_tokens
        if not math.isfinite(loss_value):  # every rank sees the same reduced loss, so all stop here
            print(f"non-finite loss {loss_value} at step {step}; stopping before it reaches a checkpoint"
                  " (lower the learning rate or check the data)", flush=True)
            sys.exit(3)
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
            "gradient_accumulation": n_micro,
        }
        if "offload" in settings:
            record["offloaded_gib"] = round(settings["offload"].take_offloaded_bytes() / 2**30, 4)
        checkpoint_now = step % config["checkpoint_every"] == 0 or step == max_steps or stop.signal is not None
        if checkpoint_now and val_examples:
            record["val_loss"] = round(mean_loss(model, val_examples, mbs, pad_id, device, precision,
                                                 prepared.head_weight, prepared.use_liger), 6)
        if rank == 0:
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"step {step}/{max_steps} loss {loss_value:.4f} lr {lr:.3g} {record['tokens_per_s']:.0f} tok/s"
                f" peak {record['peak_memory_gib']:.2f} GiB" + (f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else ""),
                flush=True,
            )
        if checkpoint_now:
            # Sharded: every rank gathers the adapters and optimizer state whole; rank 0 writes them.
            gathered = (full_adapter_state(model), full_optimizer_state(optimizer)) if shard else (None, None)
            if rank == 0:
                saved = save_checkpoint(checkpoint_dir, step, model, optimizer, scheduler, *gathered)
                print(f"checkpoint saved: {saved.name}", flush=True)
            if world > 1:
                torch.distributed.barrier()
        if stop.signal is not None and step < max_steps:
            print(f"stopping at step {step} on signal {stop.signal}; the next run resumes here", flush=True)
            sys.exit(128 + stop.signal)

    summary = {
        "final_step": step,
        "final_loss": loss_value if loss_value is not None and math.isfinite(loss_value) else None,
        "resumed_from_step": resumed_from,
        "trainable_parameters": n_trainable,
        "peft": prepared.peft,  # target modules as trained (auto resolved)
        "precision": precision,
        "world_size": world,
        "wall_time_s": round(time.perf_counter() - run_started, 2),
        "peak_memory_gib": round(peak_memory_gib(device), 4),
    }
    whole = {name: full(p.detach()) for name, p in model.named_parameters() if p.requires_grad} if shard else None
    if rank == 0:
        model.save_pretrained(output_dir / "adapter", **({"state_dict": whole} if shard else {}))
        sort_adapter_config(output_dir / "adapter" / "adapter_config.json")
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        print(f"training finished at step {step}; adapter saved to {output_dir / 'adapter'}", flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    script_main(train, __doc__.splitlines()[0])
