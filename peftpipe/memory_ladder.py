"""The memory ladder: what the preflight and the OOM retries turn on, cheapest rung first (pure).

Below the micro batch (lowered first, the global batch kept by gradient accumulation) come the
rungs, each trading speed or precision for GPU memory:

1. ``checkpointing``: keep only each layer's input and recompute the layer in backward
   (about a third more compute);
2. ``offload``: those checkpointed inputs go to pinned host memory while the forward pass runs
   and come back for the layer's backward (PCIe traffic, mostly hidden behind compute);
3. ``shard``: parameters sharded over the node's GPUs (FSDP2; only with ``train.devices > 1``);
4. ``quantize_base``: the frozen base weights stored in 4 bits (QLoRA).

``train.memory`` in the spec pins a rung on from the first attempt (``true``), forbids it
(``false``) or lets the ladder choose (``auto``, the default); an engine offers only the rungs
it implements (``Engine.memory_rungs``). A rung the ladder cannot use is named with the reason,
so a person reading the attempts table sees why the walk stopped where it did.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

RUNGS = ("checkpointing", "offload", "shard", "quantize_base")
RUNG_TEXT = {
    "checkpointing": "activation checkpointing (each layer's input kept, the layer recomputed in backward)",
    "offload": "checkpointed activations offloaded to pinned host memory",
    "shard": "parameters sharded across the node's GPUs (FSDP2)",
    "quantize_base": "4-bit base weights (QLoRA)",
}


@dataclass(frozen=True)
class MemoryRungs:
    """Which rungs an attempt runs with."""

    checkpointing: bool = False
    offload: bool = False
    shard: bool = False
    quantize_base: bool = False

    @property
    def on(self) -> tuple[str, ...]:
        return tuple(rung for rung in RUNGS if getattr(self, rung))

    def describe(self) -> str:
        return " + ".join(self.on) or "none"

    def plus(self, rung: str) -> MemoryRungs:
        return replace(self, **{rung: True})


def rung_policy(memory: Any) -> dict[str, bool | str]:
    """``train.memory`` as rung -> True (pinned on), False (forbidden) or "auto"."""
    if memory == "auto" or memory is None:
        return {rung: "auto" for rung in RUNGS}
    return {rung: getattr(memory, rung) for rung in RUNGS}


@dataclass(frozen=True)
class MemoryLadder:
    """The rungs this run may walk, in order, and why the others are out of reach."""

    start: MemoryRungs
    steps: tuple[str, ...]  # rungs the ladder may add, cheapest first
    unavailable: dict[str, str]  # rung -> why the ladder will not use it

    @classmethod
    def for_run(cls, memory: Any, activation_checkpointing: bool, data_parallel: int,
                engine_rungs: tuple[str, ...] = ("checkpointing",), engine: str = "this engine") -> MemoryLadder:
        policy = rung_policy(memory)
        if activation_checkpointing or policy["offload"] is True:
            # train.activation_checkpointing is the older spelling of the pin; offload moves checkpointed inputs.
            policy["checkpointing"] = True
        start = MemoryRungs(**{rung: policy[rung] is True for rung in RUNGS})
        steps: list[str] = []
        unavailable: dict[str, str] = {}
        for rung in RUNGS:
            if policy[rung] is True:
                continue
            if policy[rung] is False:
                unavailable[rung] = "forbidden by train.memory"
            elif rung not in engine_rungs:
                unavailable[rung] = f"not implemented by {engine}"
            elif rung == "offload" and policy["checkpointing"] is False:
                unavailable[rung] = "offload moves checkpointed activations, and checkpointing is forbidden"
            elif rung == "shard" and data_parallel < 2:
                unavailable[rung] = "needs train.devices > 1"
            elif rung == "quantize_base" and (policy["shard"] is True or "shard" in steps):
                # FSDP2 shards parameters as plain tensors; bitsandbytes' packed 4-bit weights are not.
                unavailable[rung] = "not combined with sharding (FSDP2 does not shard packed 4-bit weights)"
            else:
                steps.append(rung)
        return cls(start, tuple(steps), unavailable)

    def configurations(self) -> list[MemoryRungs]:
        """Every configuration the ladder walks, from the start: each adds the next rung."""
        walked = [self.start]
        for rung in self.steps:
            walked.append(walked[-1].plus(rung))
        return walked

    def next_rung(self, current: MemoryRungs) -> str | None:
        """The cheapest rung not yet on, or None at the top of the ladder."""
        return next((rung for rung in self.steps if not getattr(current, rung)), None)

    def out_of_reach(self) -> str:
        """For the give-up message: the rungs not used and why."""
        return "; ".join(f"{rung}: {why}" for rung, why in self.unavailable.items()) or "every rung was tried"

