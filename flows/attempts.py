"""The fine-tune stage with retries that change its inputs: visible in the flow, one task run per attempt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from peftpipe.attempts import AttemptRecord, FinetuneGaveUp, first_attempt, run_attempts
from peftpipe.engines import engine_for
from peftpipe.experiment_loggers import MetricsFollower, flat_params, open_loggers
from peftpipe.paths import RunPaths
from peftpipe.preflight import memory_estimator, model_config, preflight
from peftpipe.results import TrainResult
from peftpipe.retry import AttemptSettings
from peftpipe.slurm.attempt_history import resumed_attempt
from peftpipe.spec import LoadedSpec
from peftpipe.train_metrics import last_logged
from tasks.finetune import finetune
from flows.training_chart import LiveTrainingChart

__all__ = ["FinetuneGaveUp", "finetune_with_retries"]


def finetune_with_retries(loaded: LoadedSpec, paths: RunPaths, model_path: Path,
                          micro_batch_size: int | None = None,
                          records_out: list[AttemptRecord] | None = None) -> TrainResult:
    """Run attempts until one completes; after each failure, diagnose it and ask the policy what next.

    The per-rank batch is global / the engine's data-parallel size (hf: every GPU; nemo: GPUs /
    (TP x PP)). The preflight memory model sizes attempt 1 only for engines it describes.
    ``records_out`` receives one row per attempt (its own last step and loss) for the summary.
    """
    logger = get_run_logger()
    spec = loaded.spec
    engine = engine_for(spec.engine)

    def run_one(settings: AttemptSettings) -> TrainResult:
        return finetune(loaded, paths, model_path, settings)

    estimator, memory = None, None
    if engine.memory_model:
        config = model_config(spec, model_path)
        estimator = memory_estimator(spec, config) if config else None
        if micro_batch_size is None and spec.train.preflight:
            checked = preflight(spec, config)
            if checked is not None:
                logger.info(checked.describe())
                micro_batch_size, memory = checked.micro_batch_size, checked.memory
    records: list[AttemptRecord] = records_out if records_out is not None else []

    def remember(latest: list[AttemptRecord]) -> None:
        records[:] = latest

    first = first_attempt(spec, micro_batch_size, resumed_attempt(loaded, paths, "finetune", logger.warning), memory)
    # About 20 redraws over a run, whatever its length.
    chart = LiveTrainingChart(paths, spec.train.max_steps, spec.name, every_steps=spec.train.max_steps // 20,
                              loggers=experiment_loggers(loaded, paths, logger.warning))
    try:
        with chart:
            return run_attempts(spec, first, run_one, on_records=remember,
                                log=logger.warning, estimate_gib=estimator,
                                data_parallel=engine.data_parallel_size(spec),
                                last_logged=lambda: last_logged(paths.train_metrics_file))
    finally:
        # Once, when the attempts are over: an artifact created after every attempt showed up as
        # one card per attempt on the flow run's page.
        if records:
            _publish_attempts(records)


def experiment_loggers(loaded: LoadedSpec, paths: RunPaths, say: Callable[[str], Any]) -> MetricsFollower | None:
    """The spec's ``train.loggers``, with the hyperparameters that make the run (MLflow's params)."""
    spec = loaded.spec
    if not spec.train.loggers:
        return None
    method = spec.peft.method
    peft = {"method": method, **({method: getattr(spec.peft, method).model_dump(mode="json")}
                                 if hasattr(spec.peft, method) else {})}
    params = flat_params({"engine": spec.engine, "model": spec.model.model_dump(mode="json", exclude_none=True),
                          "peft": peft, "train": spec.train.model_dump(mode="json", exclude={"loggers"})})
    return open_loggers(spec.train.loggers, paths.finetune_dir, spec.name, paths.run_id, params, say)


def _publish_attempts(records: list[AttemptRecord]) -> None:
    """One table (and key) for every engine, so a person finds it in one place."""
    create_table_artifact([record.as_row() for record in records], key="finetune-attempts",
                          description="Fine-tune attempts: diagnosis, settings, Slurm job, last step and loss of each")
