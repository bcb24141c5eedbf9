"""Optional experiment loggers (``train.loggers``): TensorBoard event files and an MLflow run.

They are fed by the flow's own process from ``finetune/metrics.jsonl``, the per-step log every
engine writes (locally or in a Slurm job, on the shared file system), while training runs. So they
work the same for every engine and backend, jobs need neither the packages nor any credential (an
MLflow server's token stays in the flow's environment), and what they show is exactly what the
run's metrics file holds.

- ``tensorboard``: event files in ``finetune/tensorboard/`` (published with the run;
  ``tensorboard --logdir runs/<run_id>/finetune/tensorboard``). When a retry resumes from a
  checkpoint, the training script drops the steps after it from metrics.jsonl; here the writer
  marks a restart at that step (TensorBoard's ``SessionLog.START``), so TensorBoard discards the
  earlier attempt's values from there on, as it does for a restarted TensorFlow job.
- ``mlflow``: one MLflow run named after the run id (tag ``peftpipe.run_id``) in the experiment
  named after the spec, with the spec's hyperparameters as params and the curves as metrics, in
  ``MLFLOW_TRACKING_URI`` when the flow's environment sets one, else in the run's own SQLite
  store ``finetune/mlflow.db`` (published with the run; ``mlflow ui --backend-store-uri
  sqlite:///runs/<run_id>/finetune/mlflow.db``). After a resume the steps that were redone are
  logged again; MLflow keeps both values of such a step, the later one is the run's.

Both packages are the ``loggers`` extra (``pip install 'peftpipe[loggers]'``) and are imported
only when a logger is configured. MLflow's usage telemetry is turned off unless the environment
says otherwise: a training run sends nothing anywhere it was not asked to.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

LOGGERS = ("tensorboard", "mlflow")
# What each logger needs importable, and the extra that installs it.
REQUIRED_MODULE = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
INSTALL_HINT = "pip install 'peftpipe[loggers]'"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
# metrics.jsonl field -> (TensorBoard tag, MLflow metric key)
SCALARS = {
    "loss": ("train/loss", "train_loss"),
    "val_loss": ("validation/loss", "val_loss"),
    "lr": ("train/learning_rate", "learning_rate"),
    "tokens_per_s": ("train/tokens_per_s", "tokens_per_s"),
    "peak_memory_gib": ("train/peak_memory_gib", "peak_memory_gib"),
}


def missing_packages(names: Iterable[str]) -> list[str]:
    """The configured loggers whose package is not installed in this environment."""
    return [name for name in names if importlib.util.find_spec(REQUIRED_MODULE[name]) is None]


def scalars(record: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(TensorBoard tag, MLflow key, value) of every numeric field of one metrics.jsonl record."""
    return [(tag, key, float(record[field])) for field, (tag, key) in SCALARS.items()
            if isinstance(record.get(field), (int, float))]


class ExperimentLogger(Protocol):
    def log(self, records: list[dict[str, Any]]) -> None: ...

    def close(self, succeeded: bool) -> None: ...


class TensorBoardLogger:
    """Scalars per optimizer step in TensorBoard's event files, written with tensorboard's own writer."""

    def __init__(self, logdir: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self._writer = EventFileWriter(str(logdir))
        self._last_step: int | None = None

    def log(self, records: list[dict[str, Any]]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary

        for record in records:
            step = int(record["step"])
            if self._last_step is None or step <= self._last_step:
                # A new writer, or steps redone after a resume: earlier values from this step on are void.
                self._writer.add_event(Event(wall_time=time.time(), step=step,
                                             session_log=SessionLog(status=SessionLog.START)))
            values = [Summary.Value(tag=tag, simple_value=value) for tag, _, value in scalars(record)]
            self._writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
            self._last_step = step
        self._writer.flush()

    def close(self, succeeded: bool) -> None:
        self._writer.close()


class MlflowLogger:
    """One MLflow run per peftpipe run, found again by its tag when a later flow run resumes it."""

    def __init__(self, tracking_uri: str, experiment: str, run_id: str, params: dict[str, str]):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(experiment)
        earlier = self._client.search_runs([experiment_id], filter_string=f"tags.`peftpipe.run_id` = '{run_id}'",
                                           max_results=1)
        if earlier:
            self.mlflow_run_id = earlier[0].info.run_id  # params were logged by the flow run that created it
            self._client.update_run(self.mlflow_run_id, status="RUNNING")
        else:
            self.mlflow_run_id = self._client.create_run(experiment_id, run_name=run_id,
                                                         tags={"peftpipe.run_id": run_id}).info.run_id
            self._client.log_batch(self.mlflow_run_id, params=[Param(k, v) for k, v in params.items()])

    def log(self, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, int(record["step"])) for record in records
                   for _, key, value in scalars(record)]
        for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self._client.log_batch(self.mlflow_run_id, metrics=metrics[start:start + 1000])

    def close(self, succeeded: bool) -> None:
        self._client.set_terminated(self.mlflow_run_id, "FINISHED" if succeeded else "FAILED")


def flat_params(sections: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"learning_rate": 1e-4}}`` -> ``{"train.learning_rate": "0.0001"}`` (MLflow params are text)."""
    flat: dict[str, str] = {}
    for key, value in sections.items():
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


class MetricsFollower:
    """Feeds each configured logger the metrics.jsonl records it has not seen, once per poll.

    The records are compared with those fed before: after a resume truncated the file, the steps
    written again are new records (and TensorBoard marks the restart). A logger that fails is
    reported once and left out from then on: a logger must never stop training.
    """

    def __init__(self, open_all: Callable[[], list[ExperimentLogger]], say: Callable[[str], Any] = print):
        # Opened at the first record, by the caller's watcher thread: MLflow's first use of a new store
        # creates its tables (seconds), which must not hold back the start of training.
        self._open_all = open_all
        self.loggers: list[ExperimentLogger] | None = None
        self._fed: list[dict[str, Any]] = []
        self._say = say

    def feed(self, records: list[dict[str, Any]]) -> None:
        if self.loggers is None:
            if not records:
                return
            self.loggers = self._open_all()
        same = 0
        while same < min(len(records), len(self._fed)) and records[same] == self._fed[same]:
            same += 1
        fresh = records[same:]
        self._fed = list(records)
        if fresh:
            self._each(lambda logger: logger.log(fresh))

    def close(self, succeeded: bool) -> None:
        self._each(lambda logger: logger.close(succeeded))

    def _each(self, call: Callable[[ExperimentLogger], None]) -> None:
        for logger in list(self.loggers or []):
            try:
                call(logger)
            except Exception as error:  # noqa: BLE001 - reported; training goes on without this logger
                self._say(f"experiment logger {type(logger).__name__} stopped: {error}")
                self.loggers.remove(logger)  # type: ignore[union-attr] - set: we iterate over it


def open_loggers(names: Iterable[str], finetune_dir: Path, experiment: str, run_id: str,
                 params: dict[str, str], say: Callable[[str], Any] = print) -> MetricsFollower:
    """The configured loggers, writing into the run's ``finetune/`` directory (MLflow: see the module doc)."""
    names = list(names)

    def open_all() -> list[ExperimentLogger]:
        loggers: list[ExperimentLogger] = []
        for name in names:
            try:
                if name == "tensorboard":
                    loggers.append(TensorBoardLogger(finetune_dir / TENSORBOARD_DIR))
                elif name == "mlflow":
                    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(finetune_dir / MLFLOW_DB).resolve()}"
                    loggers.append(MlflowLogger(uri, experiment, run_id, params))
            except Exception as error:  # noqa: BLE001 - a logger that cannot start is reported, training goes on
                say(f"experiment logger {name} not started: {error}")
        return loggers

    return MetricsFollower(open_all, say)


def logger_files(finetune_dir: Path) -> dict[str, Path]:
    """What the loggers wrote into the run directory, by artifact-store key (published with the run)."""
    files = {}
    board = finetune_dir / TENSORBOARD_DIR
    if board.is_dir():
        files.update({f"finetune/{TENSORBOARD_DIR}/{p.name}": p for p in sorted(board.iterdir()) if p.is_file()})
    if (finetune_dir / MLFLOW_DB).is_file():
        files[f"finetune/{MLFLOW_DB}"] = finetune_dir / MLFLOW_DB
    return files
