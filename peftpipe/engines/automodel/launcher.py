"""Start NeMo AutoModel's own entry point (``nemo_automodel.cli.app``) on a config, under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=N launcher.py CONFIG.yaml [--key=value ...]

This file runs with AutoModel's interpreter (its venv or container) and imports nothing of peftpipe,
so it runs as a plain script path.

On a machine with CUDA it changes nothing: AutoModel runs exactly as ``torchrun -m
nemo_automodel.cli.app CONFIG.yaml`` would run it.

Without CUDA it redirects exactly three calls that AutoModel 0.7.0 makes unconditionally and that
a CPU build of torch cannot answer (../shared/reference/automodel.md sections 4 and 5.1). Nothing in
the installed package is edited:

1. ``torch.cuda.reset_peak_memory_stats`` (``recipes/llm/train_ft.py``, first line of ``setup()``)
   becomes a no-op.
2. ``torch.cuda.current_device`` (``_transformers/auto_model.py``, inside ``from_pretrained``)
   answers 0. Only pipeline parallelism builds a device from it.
3. The ``device`` that ``from_pretrained`` passes to ``apply_model_infrastructure`` (which calls
   ``model.to(device)``) becomes the CPU.

Test-only: when ``PEFTPIPE_FAULT_OOM_ABOVE_MBS`` is set, ``faults.py`` beside this file is
installed first (an injected CUDA out-of-memory error, as the hf engine's tests inject one).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def redirect_cuda_only_calls() -> None:
    """The three redirections above; called only when torch sees no CUDA device."""
    import torch
    from nemo_automodel._transformers import auto_model

    torch.cuda.reset_peak_memory_stats = lambda device=None: None
    torch.cuda.current_device = lambda: 0
    apply_model_infrastructure = auto_model.apply_model_infrastructure

    def on_cpu(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the wrapped function's own signature
        kwargs["device"] = torch.device("cpu")
        return apply_model_infrastructure(*args, **kwargs)

    auto_model.apply_model_infrastructure = on_cpu


def main(argv: list[str]) -> None:
    import torch

    if os.environ.get("PEFTPIPE_FAULT_OOM_ABOVE_MBS"):
        runpy.run_path(str(Path(__file__).with_name("faults.py")))["install"]()
    if not torch.cuda.is_available():
        redirect_cuda_only_calls()
    sys.argv = ["nemo_automodel.cli.app", *argv]
    runpy.run_module("nemo_automodel.cli.app", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
