"""Clear the ``-last`` checkpoints a killed job leaves, before a retry resumes from the log dir.

NeMo's ``check_resume`` (nemo/utils/exp_manager.py l.604-660 at 2874086783) globs
``checkpoints/*last.ckpt`` (or ``*last`` directories for distributed checkpoints), drops those
whose ``<path without .ckpt/.nemo/-EMA>-unfinished`` marker file exists, and raises
``ValueError: Multiple checkpoints [...] that matches *last.ckpt.`` when more than one is left
(unless the names carry mp_rank/tp_rank/fsdp_shard, where it silently takes the first). A job
killed between Lightning saving the new ``-last`` and removing the old one leaves two finished
ones (NVIDIA/NeMo#7948). This module keeps the newest by step and removes the rest.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

UNFINISHED = "-unfinished"
_RANK_DIR = re.compile(r"^(mp_rank_\d+|tp_rank_\d+(_pp_rank_\d+)?)$")
STEP_PATTERN = re.compile(r"step=(\d+)")
_CONSUMED = re.compile(r"consumed_samples=([0-9.]+)")


@dataclass(frozen=True)
class Entry:
    """One file or directory under the checkpoints directory, relative to it (POSIX separators)."""

    path: str
    is_dir: bool = False


@dataclass(frozen=True)
class CleanupPlan:
    remove: tuple[str, ...]
    keep: str | None
    reasons: tuple[str, ...]


def _logical_name(path: str) -> str:
    """The checkpoint a rank file belongs to: ``mp_rank_00/x-last.ckpt`` -> ``x-last`` (as NeMo's marker path)."""
    parts = [p for p in PurePosixPath(path).parts if not _RANK_DIR.match(p)]
    name = "/".join(parts)
    for suffix in (".nemo", ".ckpt", "-EMA"):
        name = name.removesuffix(suffix)
    return name


def _is_last(entry: Entry) -> bool:
    name = PurePosixPath(entry.path).name
    return name.endswith("last.ckpt") or (entry.is_dir and name.endswith("last") and "/" not in entry.path)


def _order(name: str) -> tuple[int, float, str]:
    step = STEP_PATTERN.search(name)
    consumed = _CONSUMED.search(name)
    return (int(step.group(1)) if step else -1, float(consumed.group(1).rstrip(".")) if consumed else -1.0, name)


def plan_cleanup(entries: list[Entry]) -> CleanupPlan:
    """What to delete so that exactly one finished ``-last`` checkpoint (the newest) remains.

    Unfinished checkpoints (a ``-unfinished`` marker beside them) go with their markers, as
    NeMoModelCheckpoint.setup would do later anyway; among finished ``-last`` ones, every rank
    file of all but the highest-step checkpoint goes.
    """
    markers = {e.path.removesuffix(UNFINISHED) for e in entries if e.path.endswith(UNFINISHED) and not e.is_dir}
    remove: list[str] = []
    reasons: list[str] = []
    finished: dict[str, list[str]] = {}
    for entry in entries:
        if entry.path.endswith(UNFINISHED):
            continue
        is_checkpoint = entry.path.endswith(".ckpt") or entry.is_dir
        if is_checkpoint and _logical_name(entry.path) in markers:
            remove.append(entry.path)
            reasons.append(f"{entry.path}: unfinished (its save was interrupted)")
        elif _is_last(entry):
            finished.setdefault(_logical_name(entry.path), []).append(entry.path)
    remove += sorted(f"{m}{UNFINISHED}" for m in markers)
    keep = max(finished, key=_order) if finished else None
    for name, files in sorted(finished.items()):
        if name != keep:
            remove += sorted(files)
            reasons.append(f"{name}: an older -last checkpoint than {keep}")
    return CleanupPlan(remove=tuple(remove), keep=keep, reasons=tuple(reasons))


def list_entries(checkpoints_dir: Path) -> list[Entry]:
    """Files and directories under ``checkpoints_dir``; distributed checkpoint directories are not descended."""
    if not checkpoints_dir.is_dir():
        return []
    entries: list[Entry] = []
    for path in sorted(checkpoints_dir.iterdir()):
        if path.is_dir() and _RANK_DIR.match(path.name):
            entries += [Entry(f"{path.name}/{child.name}", child.is_dir()) for child in sorted(path.iterdir())]
        else:
            entries.append(Entry(path.name, path.is_dir()))
    return entries


def clear_stale_checkpoints(checkpoints_dir: Path) -> CleanupPlan:
    """Apply :func:`plan_cleanup` to ``checkpoints_dir``; run it before every retry's submission."""
    plan = plan_cleanup(list_entries(checkpoints_dir))
    for relative in plan.remove:
        target = checkpoints_dir / relative
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return plan


def last_checkpoint_step(checkpoints_dir: Path) -> int | None:
    """The step of the finished ``-last`` checkpoint: NeMo names it ``...-step=<global step>-...-last.ckpt``."""
    steps = [int(m.group(1)) for p in checkpoints_dir.glob("*last.ckpt")
             if (m := STEP_PATTERN.search(p.name)) and not Path(f"{str(p).removesuffix('.ckpt')}-unfinished").exists()]
    return max(steps) if steps else None
