"""The optional experiment loggers read back with TensorBoard's and MLflow's own readers: what they hold is
what metrics.jsonl holds, a resumed attempt's redone steps included. (The flow feeding them while a real
run retries after an OOM: tests/test_oom_retry_local.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftpipe import experiment_loggers
from peftpipe.experiment_loggers import open_loggers
from peftpipe.validation import SpecError, load_spec
from tests.conftest import write_spec


def tensorboard_scalars(logdir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(logdir))
    board.Reload()
    events = board.Scalars(tag)
    steps = [event.step for event in events]
    assert steps == sorted(set(steps)), f"{tag}: steps {steps} (a redone step must replace, not repeat)"
    return {event.step: event.value for event in events}


def mlflow_history(finetune_dir: Path, experiment: str, run_id: str, key: str) -> dict[int, float]:
    """The run's value of ``key`` at each step: the last one logged, as MLflow shows it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{finetune_dir / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               filter_string=f"tags.`peftpipe.run_id` = '{run_id}'")
    assert len(found) == 1 and found[0].info.run_name == run_id and found[0].info.status == "FINISHED"
    history = sorted(client.get_metric_history(found[0].info.run_id, key), key=lambda m: (m.step, m.timestamp))
    return {metric.step: metric.value for metric in history}


def check_against_metrics_file(finetune_dir: Path, experiment: str, run_id: str) -> dict[int, float]:
    """Every logger's training loss, learning rate and validation loss equal metrics.jsonl's, step by step."""
    records = [json.loads(line) for line in (finetune_dir / "metrics.jsonl").read_text().splitlines()]
    for field, tag, key in (("loss", "train/loss", "train_loss"), ("lr", "train/learning_rate", "learning_rate"),
                            ("val_loss", "validation/loss", "val_loss")):
        expected = {r["step"]: r[field] for r in records if field in r}
        assert expected
        board = tensorboard_scalars(finetune_dir / "tensorboard", tag)
        assert board == pytest.approx(expected, rel=1e-6)  # TensorBoard keeps float32
        assert mlflow_history(finetune_dir, experiment, run_id, key) == pytest.approx(expected, rel=1e-12)
    return {r["step"]: r["loss"] for r in records}


def test_a_resume_replaces_the_redone_steps_in_both_loggers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    finetune_dir = tmp_path / "finetune"
    finetune_dir.mkdir()
    metrics = finetune_dir / "metrics.jsonl"
    said: list[str] = []
    follower = open_loggers(["tensorboard", "mlflow"], finetune_dir, "tiny", "tiny-1",
                            {"train.learning_rate": "0.001"}, say=said.append)

    def write(records: list[dict]) -> None:
        metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
        follower.feed([json.loads(line) for line in metrics.read_text().splitlines()])

    first = [{"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3, **({"val_loss": 2.9} if s == 4 else {})}
             for s in range(1, 7)]
    write(first[:3])
    write(first)  # attempt 1 reached step 6, then ran out of memory
    # attempt 2 resumes from the checkpoint at step 4: the training script drops steps 5 and 6 and redoes them
    second = first[:4] + [{"step": s, "loss": 1.0 / s, "lr": 5e-4} for s in range(5, 9)]
    write(first[:4])
    write(second)
    follower.close(succeeded=True)
    assert said == []

    check_against_metrics_file(finetune_dir, "tiny", "tiny-1")
    # The redone steps hold attempt 2's values in the logger, not attempt 1's.
    board = tensorboard_scalars(finetune_dir / "tensorboard", "train/loss")
    assert board[5] == pytest.approx(0.2) and board[8] == pytest.approx(0.125)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{finetune_dir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    assert run.data.params == {"train.learning_rate": "0.001"}
    assert sorted(experiment_loggers.logger_files(finetune_dir)) == [
        "finetune/mlflow.db", *[f"finetune/tensorboard/{p.name}" for p in (finetune_dir / "tensorboard").iterdir()]]


def test_a_logger_whose_package_is_missing_is_refused_before_anything_runs(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path, {"train.loggers": ["tensorboard", "mlflow"]})
    load_spec(spec)  # both installed here (the loggers extra)
    monkeypatch.setitem(experiment_loggers.REQUIRED_MODULE, "mlflow", "mlflow_not_installed_here")
    with pytest.raises(SpecError) as refused:
        load_spec(spec)
    assert [str(issue) for issue in refused.value.issues] == [
        "train.loggers: mlflow is not installed here. Fix: pip install 'peftpipe[loggers]', or remove mlflow."]
    with pytest.raises(SpecError) as unknown:
        load_spec(write_spec(tmp_path / "wandb", {"train.loggers": ["wandb"]}))
    assert "train.loggers" in str(unknown.value)
