"""Before the first submission: the cheapest memory-ladder configuration and largest micro batch predicted to fit.

The user's ``micro_batch_size`` is an upper bound. Only divisors of the per-rank batch are
candidates, so the global batch stays what the spec says; the estimate comes from the model's
``config.json`` through :mod:`peftpipe.memory`, with a safety margin for the CUDA context, the
allocator's cache and the estimate's own error. When not even micro batch 1 fits, the ladder's
next rung (:mod:`peftpipe.memory_ladder`: checkpointing, offload, ...) is tried, cheapest first.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftpipe.memory import GIB, ModelShape, estimate_memory
from peftpipe.engines import ladder_for
from peftpipe.memory_ladder import RUNG_TEXT, MemoryLadder, MemoryRungs
from peftpipe.model_fit import resolved_peft
from peftpipe.model_layout import ModelLayout
from peftpipe.spec import RunSpec

SAFETY_FRACTION = 0.85  # of the GPU's memory that the estimate may use
CONTEXT_GIB = 0.75  # CUDA context and libraries, outside torch's allocator
# Below this many tokens a micro batch leaves the GPU idle (bench/RESULTS-ladder.md: with checkpointing the
# 8B shape makes 9.1k tokens/s at 2048 tokens, 13.3k at 8192; the 1B shape 15k and 71k at 2048 and 16384).
EFFICIENT_MICRO_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class PreflightResult:
    requested_micro_batch_size: int
    micro_batch_size: int
    estimate_gib: float  # at the chosen micro batch
    budget_gib: float
    gpu_memory_gib: float
    fits: bool
    memory: MemoryRungs = MemoryRungs()
    walked: tuple[str, ...] = ()  # one line per ladder configuration tried, in order

    def describe(self) -> str:
        change = (f"lowered from {self.requested_micro_batch_size} to {self.micro_batch_size}"
                  if self.micro_batch_size < self.requested_micro_batch_size else "kept")
        verdict = "fits" if self.fits else "does NOT fit even at 1"
        lines = [f"preflight: micro batch {change}, memory rungs: {self.memory.describe()}: estimated"
                 f" {self.estimate_gib:.1f} GiB per GPU ({verdict} in {self.budget_gib:.1f} GiB of"
                 f" {self.gpu_memory_gib:.0f} GiB)"]
        return "\n".join(lines + [f"  {line}" for line in self.walked])


def memory_estimator(spec: RunSpec, model_config: dict) -> Callable[[int, MemoryRungs], float]:
    """GiB per GPU for (micro batch, memory rungs) of this spec's model and method.

    The shape is read from the model built on the meta device from ``model_config``
    (``peftpipe.model_inspect``), so every family's projections and parameters count as they are.
    """
    from peftpipe.model_inspect import inspect_config

    layout = inspect_config(model_config)
    shape = ModelShape.from_layout(layout)
    precision = "bf16" if spec.train.precision == "auto" else spec.train.precision
    options = _method_options(spec, layout)
    kernels = kernels_for(layout.model_type)

    ranks = spec.train.data_parallel_size

    def estimate(micro_batch_size: int, rungs: MemoryRungs) -> float:
        return estimate_memory(shape, spec.train.max_seq_length, micro_batch_size, precision=precision,
                               activation_checkpointing=rungs.checkpointing, kernels=kernels,
                               offload_activations=rungs.offload, shard_ranks=ranks if rungs.shard else 1,
                               quantize_base=rungs.quantize_base, **options).total / GIB

    return estimate


def kernels_for(model_type: str) -> str:
    """The engine uses Liger's kernels when they are importable where it runs (for a job on the same
    Python as the flow, this interpreter) and Liger patches this family; otherwise its own fused paths."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "fused"
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return "liger" if model_type in MODEL_TYPE_TO_APPLY_LIGER_FN else "fused"


def choose_micro_batch(spec: RunSpec, model_config: dict, gpu_memory_gib: float,
                       ladder: MemoryLadder | None = None) -> PreflightResult:
    """The cheapest ladder configuration that runs an efficient micro batch, and that micro batch.

    For each configuration, cheapest first, the largest divisor of the per-rank batch (at most the spec's
    micro batch) predicted to fit. A configuration is taken when that micro batch holds at least
    ``EFFICIENT_MICRO_BATCH_TOKENS`` tokens (or is the largest allowed); otherwise the next rung is
    tried, since a rung that fits a larger micro batch runs faster (measured: the 8B shape with
    checkpointing at micro batch 1 makes 9.1k tokens/s, with offload at 16, 13.0k). If no rung reaches
    it, the configuration with the largest fitting micro batch wins (the cheapest among equals).
    """
    train = spec.train
    ladder = ladder or ladder_for(spec)
    per_rank = train.global_batch_size // train.data_parallel_size
    budget = gpu_memory_gib * SAFETY_FRACTION - CONTEXT_GIB
    estimator = memory_estimator(spec, model_config)
    candidates = [d for d in range(min(train.micro_batch_size, per_rank), 0, -1) if per_rank % d == 0]
    efficient = min(candidates[0], max(1, -(-EFFICIENT_MICRO_BATCH_TOKENS // train.max_seq_length)))
    walked: list[str] = []
    best: tuple[int, float, MemoryRungs] | None = None
    configurations = ladder.configurations()
    for index, rungs in enumerate(configurations):
        added = f"+ {RUNG_TEXT[ladder.steps[index - 1]]}" if index else f"rungs {rungs.describe()}"
        fitting = next(((m, e) for m in candidates if (e := estimator(m, rungs)) <= budget), None)
        if fitting is None:
            walked.append(f"{added}: not even micro batch 1 fits ({estimator(1, rungs):.1f} GiB)")
            continue
        micro_batch_size, estimate = fitting
        if best is None or micro_batch_size > best[0]:
            best = (micro_batch_size, estimate, rungs)
        if micro_batch_size >= efficient:
            walked.append(f"{added}: micro batch {micro_batch_size} fits ({estimate:.1f} GiB)")
            break
        walked.append(f"{added}: only micro batch {micro_batch_size} fits ({estimate:.1f} GiB), below"
                      f" {efficient} ({EFFICIENT_MICRO_BATCH_TOKENS} tokens); trying the next rung")
    if best is not None:
        micro_batch_size, estimate, rungs = best
        return PreflightResult(train.micro_batch_size, micro_batch_size, round(estimate, 2), round(budget, 2),
                               gpu_memory_gib, True, rungs, tuple(walked))
    walked.append(f"out of reach: {ladder.out_of_reach()}")
    top = configurations[-1]
    return PreflightResult(train.micro_batch_size, 1, round(estimator(1, top), 2), round(budget, 2), gpu_memory_gib,
                           False, top, tuple(walked))


def _method_options(spec: RunSpec, layout: ModelLayout) -> dict:
    method = spec.peft.method
    peft = resolved_peft({"method": method, **getattr(spec.peft, method).model_dump()}, layout)
    if peft["method"] == "lora":
        return {"method": "lora", "lora_rank": peft["r"], "target_modules": tuple(peft["target_modules"])}
    if peft["method"] == "ia3":
        return {"method": "ia3", "target_modules": tuple(peft["target_modules"]),
                "feedforward_modules": tuple(peft["feedforward_modules"])}
    return {"method": "ptuning", "num_virtual_tokens": peft["num_virtual_tokens"]}


def gpu_memory_gib(spec: RunSpec) -> float | None:
    """The memory of one GPU the stage will get: the spec's GPU type on Slurm, nvidia-smi locally."""
    if spec.execution.backend == "slurm":
        return spec.execution.slurm.gpu_memory_gb * 10**9 / GIB
    if shutil.which("nvidia-smi") is None:
        return None  # CPU: nothing to protect
    output = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                            capture_output=True, text=True).stdout.split()
    return float(output[0]) / 1024 if output else None


def model_config(spec: RunSpec, model_path: Path) -> dict | None:
    """The model's config.json when the estimate can use it (a model transformers builds, a method it models).

    Only for engines whose ``memory_model`` says this estimate describes them (the flow asks).
    """
    if spec.peft.method not in ("lora", "ia3", "ptuning"):
        return None
    from peftpipe.model_inspect import UnsupportedModel, inspect_config

    try:
        config = json.loads((model_path / "config.json").read_text())
        inspect_config(config)
    except (OSError, ValueError, UnsupportedModel):
        return None
    return config


def preflight(spec: RunSpec, config: dict | None) -> PreflightResult | None:
    """None when there is no GPU to size for or no config the estimate understands (see model_config)."""
    memory = gpu_memory_gib(spec)
    if memory is None or config is None:
        return None
    return choose_micro_batch(spec, config, memory)
