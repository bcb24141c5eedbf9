"""Test-only fault injection around AutoModel, installed by launcher.py only when
PEFTPIPE_FAULT_OOM_ABOVE_MBS is set: the counterpart of the hf engine's ``injected_oom``.

When an optimizer step's micro batches hold more than PEFTPIPE_FAULT_OOM_ABOVE_MBS samples, from
step PEFTPIPE_FAULT_OOM_FROM_STEP on (0-based, as AutoModel counts), the step raises the error a
GPU raises when it runs out of memory, so the retry path can be exercised on machines without a GPU.
PEFTPIPE_FAULT_OOM_RANK limits it to one rank. The error is raised where AutoModel's step scheduler
hands the step's batches to its training loop; the training itself is AutoModel's, unchanged.
"""

from __future__ import annotations

import os


def install() -> None:
    import torch
    from nemo_automodel.components.training.step_scheduler import StepScheduler

    limit = int(os.environ["PEFTPIPE_FAULT_OOM_ABOVE_MBS"])
    from_step = int(os.environ.get("PEFTPIPE_FAULT_OOM_FROM_STEP", "0"))
    only_rank = os.environ.get("PEFTPIPE_FAULT_OOM_RANK")
    iterate = StepScheduler.__iter__

    def with_injected_oom(self):  # noqa: ANN001, ANN202 - StepScheduler.__iter__'s own signature
        for batches in iterate(self):
            local_batch = len(batches[0]["input_ids"])
            if (local_batch > limit and self.step >= from_step
                    and (only_rank is None or os.environ.get("RANK", "0") == only_rank)):
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected: local batch"
                                             f" {local_batch} > {limit} at step {self.step})")
            yield batches

    StepScheduler.__iter__ = with_injected_oom
