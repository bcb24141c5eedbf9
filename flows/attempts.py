"""The fine-tune stage with retries that change its inputs: visible in the flow, one task run per attempt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from peftpipe.failures import diagnose
from peftpipe.paths import RunPaths
from peftpipe.retry import AttemptSettings, next_attempt
from peftpipe.spec import LoadedSpec
from peftpipe.stages import StageFailed, TrainResult
from tasks.finetune import finetune


class FinetuneGaveUp(RuntimeError):
    """Every attempt the policy allowed failed; the message says what was tried and what to change."""


def finetune_with_retries(loaded: LoadedSpec, paths: RunPaths, model_path: Path) -> TrainResult:
    """Run attempts until one completes; after each failure, diagnose it and ask the policy what next."""
    train = loaded.spec.train
    settings = AttemptSettings(attempt=1, micro_batch_size=train.micro_batch_size,
                               activation_checkpointing=train.activation_checkpointing)
    rows: list[dict[str, Any]] = []
    logger = get_run_logger()
    while True:
        started = time.monotonic()
        state = finetune(loaded, paths, model_path, settings.micro_batch_size, settings.attempt,
                         settings.activation_checkpointing, return_state=True)
        row = {"attempt": settings.attempt, "micro_batch_size": settings.micro_batch_size,
               "gradient_accumulation": train.global_batch_size // train.data_parallel_size // settings.micro_batch_size,
               "activation_checkpointing": settings.activation_checkpointing,
               "duration_s": round(time.monotonic() - started, 1)}
        if state.is_completed():
            rows.append({**row, "outcome": "completed", "kind": "none", "evidence": ""})
            _publish_attempts(rows)
            return state.result()
        error = state.result(raise_on_failure=False)
        if not isinstance(error, StageFailed):
            rows.append({**row, "outcome": "failed", "kind": "unknown", "evidence": str(error)[:300]})
            _publish_attempts(rows)
            raise error if isinstance(error, BaseException) else RuntimeError(str(error))
        diagnosis = diagnose(None, error.exit_code, error.log_tail)
        decision = next_attempt(diagnosis, settings, train.global_batch_size, train.data_parallel_size,
                                train.max_attempts)
        rows.append({**row, "outcome": "failed", "kind": diagnosis.kind.value, "evidence": diagnosis.evidence[:300]})
        logger.warning("attempt %d failed (%s): %s -> %s", settings.attempt, diagnosis.kind.value,
                       diagnosis.evidence, decision.reason)
        if not decision.retry:
            _publish_attempts(rows)
            tried = ", ".join(f"mbs {r['micro_batch_size']}{' + checkpointing' if r['activation_checkpointing'] else ''}"
                              for r in rows)
            raise FinetuneGaveUp(f"fine-tune failed after {len(rows)} attempt(s) ({tried}): {decision.reason}")
        settings = decision.next


def _publish_attempts(rows: list[dict[str, Any]]) -> None:
    create_table_artifact(rows, key="finetune-attempts", description="Fine-tune attempts: diagnosis and settings")
