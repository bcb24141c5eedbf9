"""`peftpipe runs` and `peftpipe runs compare` over a real file artifact store holding published runs."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.app import app
from peftpipe.artifacts import FileArtifactStore, publish_directory
from peftpipe.promotion import promote
from peftpipe.validation import load_spec
from tests.conftest import write_spec

runner = CliRunner()


def publish_run(store: FileArtifactStore, tmp_path: Path, run_id: str, changes: dict, metrics: dict,
                fingerprint: str) -> None:
    """A run as the publish stage stores it: the validated spec (with its overrides) and the scores."""
    spec = load_spec(write_spec(tmp_path / run_id, {"model.cache_dir": str(tmp_path / "hf")}), changes).spec
    adapter = tmp_path / run_id / "adapter_model.safetensors"
    adapter.write_bytes(run_id.encode())
    publish_directory(store, run_id, {"adapter/adapter_model.safetensors": adapter}, {
        "created": f"2026-11-29T10:0{len(store.list_runs())}:00+00:00",
        "spec": spec.model_dump(mode="json"),
        "base_model": {"repo_id": "peftpipe/tiny-llama", "commit_sha": "a" * 40},
        "dataset": {"fingerprint": fingerprint, "counts": {"train": 51}},
        "metrics": metrics,
    })


def test_runs_lists_settings_that_differ_metrics_and_the_promoted_run(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "store")
    publish_run(store, tmp_path, "tiny-squad-lora-a", {"train.learning_rate": 1e-4},
                {"exact_match": 0.1, "f1": 0.25, "loss": 2.5}, "f" * 64)
    publish_run(store, tmp_path, "tiny-squad-lora-b", {"train.learning_rate": 3e-4, "peft.lora.r": 8},
                {"exact_match": 0.2, "f1": 0.4, "loss": 2.1}, "e" * 64)
    (tmp_path / "store" / "tiny-squad-lora-c").mkdir()  # a run whose publish never finished
    promote(store, "tiny-squad-lora", "tiny-squad-lora-b", "f1", 0.4, "e" * 64)
    url = f"file://{tmp_path / 'store'}"

    listed = runner.invoke(app, ["runs", "tiny-squad-lora", "--store", url], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in listed.output.splitlines() if line.startswith("│")}
    header = [c.strip() for c in next(line for line in listed.output.splitlines() if line.startswith("┃"))
              .split("┃")[2:-1]]
    a, b = dict(zip(header, lines["tiny-squad-lora-a"])), dict(zip(header, lines["tiny-squad-lora-b"]))
    assert (a["lr"], b["lr"]) == ("0.0001", "0.0003")
    assert (a["peft.lora.r"], b["peft.lora.r"]) == ("16", "8")  # an overridden key gets its own column
    assert (a["data"], b["data"]) == ("ffffffff", "eeeeeeee")
    assert (a["F1"], b["F1"], a["engine"]) == ("0.25", "0.4", "hf")
    assert (a["promoted"], b["promoted"]) == ("", "yes")
    assert lines["tiny-squad-lora-c"][0].startswith("incomplete")
    assert "train.max_steps" not in header and "workdir" not in header

    compared = runner.invoke(app, ["runs", "compare", "tiny-squad-lora-a", "tiny-squad-lora-b", "--store", url],
                             env={"COLUMNS": "250"})
    assert compared.exit_code == 0, compared.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in compared.output.splitlines() if line.startswith("│")}
    assert rows["train.learning_rate"] == ["0.0001", "0.0003", "*"]
    assert rows["peft.lora.r"] == ["16", "8", "*"]
    assert rows["base model commit"] == ["aaaaaaaaaaaa", "aaaaaaaaaaaa", ""]
    assert rows["f1"] == ["0.25", "0.4", "*"]
    assert "train.micro_batch_size" not in rows  # equal settings are left out

    unknown = runner.invoke(app, ["runs", "compare", "tiny-squad-lora-a", "nope", "--store", url])
    assert unknown.exit_code == 2 and "nope" in unknown.output
    assert json.loads((tmp_path / "store" / "_promoted" / "tiny-squad-lora.json").read_text())["run_id"].endswith("b")
