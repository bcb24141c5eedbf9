"""What the automodel engine reads back from AutoModel's files: metrics across attempts, resume step, adapter."""

from __future__ import annotations

import json
from pathlib import Path

from peftpipe.engines.automodel.layout import AutomodelPaths
from peftpipe.engines.automodel.outputs import collect_outputs, resumed_from, write_training_data
from peftpipe.paths import RunPaths


def step_line(step: int, loss: float) -> str:
    """A training line exactly as AutoModel 0.7.0's rank 0 prints it (recipes/llm/train_ft.py)."""
    return (f"2026-11-29 15:55:56 | INFO | root | step {step} | epoch 0 | loss {loss:.4f} | grad_norm 11.0255 |"
            f" lr 3.25e-03 | mem 0.00 GiB | tps 460.29(460.29/gpu) | num_label_tokens 25\n")


def test_metrics_of_a_failed_attempt_and_its_resumed_retry(tmp_path: Path) -> None:
    """Attempt 1 died at step 3 before AutoModel flushed training.jsonl; attempt 2 resumed from step 2's checkpoint."""
    run = RunPaths(tmp_path / "run")
    layout = AutomodelPaths(run)
    first, second = run.attempt_dir("finetune", 1), run.attempt_dir("finetune", 2)
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    (first / "output.log").write_text("".join(step_line(s, 8.0 - s) for s in range(4)) + "torch.OutOfMemoryError\n")
    checkpoint = layout.checkpoint_dir / "epoch_0_step_2"
    (second / "output.log").write_text(f"Loading checkpoint from {checkpoint}\n"
                                       + "".join(step_line(s, 7.0 - s) for s in (3, 4)))
    last = layout.checkpoint_dir / "epoch_0_step_4"
    (last / "model").mkdir(parents=True)
    (last / "model" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (last / "model" / "adapter_model.safetensors").write_bytes(b"weights")
    (layout.checkpoint_dir / "LATEST").symlink_to(last.name)
    (layout.checkpoint_dir / "training.jsonl").write_text(
        json.dumps({"step": 4, "loss": 2.987654321, "lr": 0.001, "tps": 500.0, "grad_norm": 1.5, "mem": 0.0}) + "\n")
    (layout.checkpoint_dir / "validation.jsonl").write_text(json.dumps({"step": 4, "val_loss": 3.5}) + "\n")

    summary = collect_outputs(run, second / "output.log", 2, 4, 12.5)

    metrics = [json.loads(line) for line in run.train_metrics_file.read_text().splitlines()]
    assert [(m["step"], m["loss"]) for m in metrics] == [(1, 8.0), (2, 7.0), (3, 6.0), (4, 4.0), (5, 2.987654321)]
    assert metrics[-1]["val_loss"] == 3.5 and "val_loss" not in metrics[0]
    assert summary["final_step"] == 5 and summary["resumed_from_step"] == 3 and summary["final_loss"] == 2.987654321
    assert (run.adapter_dir / "adapter_model.safetensors").read_bytes() == b"weights"
    assert summary["peak_memory_gib"] != summary["peak_memory_gib"]  # NaN: AutoModel reports 0 GiB on a CPU


def test_resume_step_is_the_last_runs(tmp_path: Path) -> None:
    log = "Loading checkpoint from /r/epoch_0_step_4\nstep ...\nLoading checkpoint from /r/epoch_1_step_9/\n"
    assert resumed_from(log) == 10
    assert resumed_from("no resume here") is None


def test_training_data_is_the_prompt_template_up_to_the_answer(tmp_path: Path) -> None:
    run = RunPaths(tmp_path / "run")
    run.data_dir.mkdir(parents=True)
    record = {"input": "Context: grace likes purple.\nQuestion: colour?", "output": "purple", "id": "1"}
    for split in ("train", "validation"):
        run.data_file(split).write_text(json.dumps(record) + "\n")
    write_training_data(run, "{input}\nAnswer: {output}")
    rows = [json.loads(line) for line in AutomodelPaths(run).data_file("train").read_text().splitlines()]
    # AutoModel trains on prompt + " " + answer: exactly the template's text.
    assert rows == [{"prompt": "Context: grace likes purple.\nQuestion: colour?\nAnswer:", "answer": "purple"}]
