"""The hf engine's checkpoints: durable when saved, verified when loaded.

A checkpoint is ``step-NNNNNNN/state.pt`` (adapter, optimizer, scheduler, RNG) plus
``checkpoint.json`` with the file's size and sha256. It is written under a temporary name,
fsynced (file, then directory) and only then renamed into place, so after a power loss the
newest name points at complete bytes or does not exist. Loading checks the record and falls
back to the newest checkpoint that verifies, saying which one was skipped and why.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peftpipe.hashing import sha256_file

CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
RECORD = "checkpoint.json"


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def checkpoints_newest_first(checkpoint_dir: Path) -> list[Path]:
    found = [p for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
             if p.is_dir() and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), reverse=True)


def save_checkpoint(checkpoint_dir: Path, step: int, peft_model: Any, optimizer: Any, scheduler: Any,
                    adapter_state: dict[str, Any] | None = None, optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write to a temporary directory, fsync, rename: a killed job or a power loss never leaves half a
    checkpoint under a checkpoint's name. A sharded model passes its adapter and optimizer state gathered
    whole (``sharding.full_adapter_state``, ``full_optimizer_state``): the file is the same either way."""
    from peft import get_peft_model_state_dict

    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:07d}"
    partial = checkpoint_dir / f".partial-{final.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    state = {
        "step": step,
        "adapter": adapter_state if adapter_state is not None else get_peft_model_state_dict(peft_model),
        "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    state_file = partial / "state.pt"
    torch.save(state, state_file)
    fsync_path(state_file)
    record = {"step": step, "size": state_file.stat().st_size, "sha256": sha256_file(state_file)}
    (partial / RECORD).write_text(json.dumps(record) + "\n")
    fsync_path(partial / RECORD)
    fsync_path(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    fsync_path(checkpoint_dir)  # the rename itself is durable before older checkpoints go
    for old in checkpoints_newest_first(checkpoint_dir)[KEEP_CHECKPOINTS:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_verified_state(path: Path) -> dict[str, Any]:
    """The checkpoint's state; ValueError saying what is wrong when it is damaged."""
    state_file = path / "state.pt"
    if not state_file.is_file():
        raise ValueError("state.pt is missing")
    size = state_file.stat().st_size
    record_file = path / RECORD
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{RECORD} is unreadable ({error})") from error
        if size != record["size"]:
            raise ValueError(f"state.pt has {size} bytes, {record['size']} were written")
        if sha256_file(state_file) != record["sha256"]:
            raise ValueError("state.pt does not match its sha256")
    elif size == 0:
        raise ValueError("state.pt is empty")
    try:
        return torch.load(state_file, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable pickle/zip is a damaged checkpoint
        raise ValueError(f"state.pt cannot be read ({type(error).__name__}: {error})") from error


def latest_intact_state(checkpoint_dir: Path, say: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies and its state; None when there is none. Skipped ones are named."""
    for path in checkpoints_newest_first(checkpoint_dir):
        try:
            return path, read_verified_state(path)
        except ValueError as damage:
            say(f"checkpoint {path.name} is damaged ({damage}); trying the one before it")
    return None


def restore_training_state(state: dict[str, Any], optimizer: Any, scheduler: Any,
                           optimizer_state: dict[str, Any] | None = None) -> int:
    """Optimizer (or ``optimizer_state``, the saved one cut to a sharded model's shards), scheduler and RNG;
    returns the step."""
    optimizer.load_state_dict(optimizer_state if optimizer_state is not None else state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["step"])
