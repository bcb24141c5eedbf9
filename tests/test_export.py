"""`peftpipe export RUN_ID`: an HF PEFT folder with a model card, a merged model that matches base + adapter,
a push to the loopback Hub fetched back by repo id, and the export listed in the run's manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftpipe.artifacts import publish_directory, restore
from peftpipe.hub.adapter_reference import point_at_hub
from peftpipe.stores import open_store
from tests.conftest import TINY_REPO_ID, write_spec

METRICS = {"records": 9, "exact_match": 0.25, "f1": 0.5, "loss": 2.0,
           "baseline": {"records": 9, "exact_match": 0.0, "f1": 0.1, "loss": 3.0},
           "delta": {"exact_match": 0.25, "f1": 0.4, "loss": -1.0}}


def publish_random_adapter(store_root: Path, run_id: str, base_dir: Path, spec: dict, base_model: dict,
                           targets: list[str], work: Path) -> None:
    """A run in a file store with a LoRA adapter of random, non-zero weights (so merging visibly changes logits)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = work / f"{run_id}-adapter"
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=targets, init_lora_weights=False)).save_pretrained(adapter)
    point_at_hub(adapter, base_model.get("repo_id"), base_model.get("commit_sha"))
    predictions = work / f"{run_id}-predictions.jsonl"
    predictions.write_text("".join(json.dumps({"input": f"Context: a checkpoint saves state.\nQuestion: q{i}?",
                                               "pred": "x", "label": "y"}) + "\n" for i in range(3)))
    metrics = work / f"{run_id}-metrics.json"
    metrics.write_text(json.dumps(METRICS))
    files = {f"adapter/{p.name}": p for p in adapter.iterdir()}
    files |= {"evaluate/predictions.jsonl": predictions, "evaluate/metrics.json": metrics}
    publish_directory(open_store(f"file://{store_root}"), run_id, files, {
        "spec": spec, "base_model": base_model, "metrics": METRICS, "peftpipe_version": "test",
        "dataset": {"fingerprint": "f" * 64, "counts": {"train": 45, "validation": 9, "test": 9}}})


def logits(model, tokenizer, text: str):  # noqa: ANN001, ANN201
    import torch

    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_export_merge_push_and_fetch_back(tmp_path: Path, hub_root: Path, hub_endpoint: str) -> None:
    from huggingface_hub import snapshot_download
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftpipe.hub.mirror import MirrorRoot
    from peftpipe.validation import load_spec

    sha = MirrorRoot(hub_root).commit_sha(TINY_REPO_ID)
    spec = load_spec(write_spec(tmp_path / "spec")).spec.model_dump(mode="json")
    store = tmp_path / "store"
    publish_random_adapter(store, "run-1", hub_root / TINY_REPO_ID, spec, {"repo_id": TINY_REPO_ID, "commit_sha": sha},
                           ["q_proj", "v_proj", "down_proj"], tmp_path)

    env = {**os.environ, "HF_ENDPOINT": hub_endpoint, "HF_HOME": str(tmp_path / "hf-home")}
    out = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "peftpipe", "export", "run-1", "--store", f"file://{store}",
                             "--out", str(out), "--merge", "--max-shard-size", "200KB", "--push", "lab/tiny-merged"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    parity = summary["parity"]
    assert parity["max_abs_logit_diff"] <= parity["tolerance"] == 1e-3 and parity["generations_equal"]
    assert parity["prompts"] == 3  # the run's own test prompts, with its template

    # The adapter folder is ready to serve: it names the Hub base and its commit, carries tokenizer and card.
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (TINY_REPO_ID, sha)
    assert {"adapter_model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in adapter.iterdir()}
    card = (adapter / "README.md").read_text()
    assert f"base_model: {TINY_REPO_ID}" in card and "f" * 64 in card and sha in card
    assert "| f1 | 0.1000 | 0.5000 | 0.4000 |" in card and "train.learning_rate" in card
    # The merged model: several safetensors shards with their index, config and tokenizer (what vLLM reads).
    merged = out / "merged"
    assert len(list(merged.glob("model-*-of-*.safetensors"))) > 1 and (merged / "model.safetensors.index.json").is_file()
    assert {"config.json", "tokenizer.json"} <= {p.name for p in merged.iterdir()}

    # Fetched back from the Hub by repo id, the merged model loads with stock transformers and equals base + adapter.
    fetched = Path(snapshot_download("lab/tiny-merged", endpoint=hub_endpoint, cache_dir=tmp_path / "fetch"))
    assert sorted(p.name for p in fetched.iterdir()) == sorted(p.name for p in merged.iterdir())
    tokenizer = AutoTokenizer.from_pretrained(fetched)
    prompt = "Context: Slurm runs jobs.\nQuestion: What runs jobs?\nAnswer: "
    served = logits(AutoModelForCausalLM.from_pretrained(fetched), tokenizer, prompt)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID), adapter)
    expected = logits(with_adapter, tokenizer, prompt)
    base_only = logits(AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID), tokenizer, prompt)
    assert float((served - expected).abs().max()) < 1e-3
    assert float((base_only - expected).abs().max()) > 0.1  # the adapter matters, so the parity is no accident

    # The export joined the run in the artifact store, listed with checksums in its manifest.
    manifest = json.loads((store / "run-1" / "manifest.json").read_text())
    keys = {o["key"] for o in manifest["objects"]}
    assert {"adapter/adapter_config.json", "export/adapter/README.md", "export/merged/model.safetensors.index.json",
            "export/parity.json"} <= keys
    assert manifest["export"]["pushed"]["repo_id"] == "lab/tiny-merged"
    restored = restore(open_store(f"file://{store}"), "run-1", "export/merged", tmp_path / "restored")
    assert len(restored) == len(list(merged.iterdir()))


@pytest.mark.parametrize(("family", "targets"), [("gpt2", ["c_attn", "c_proj"]),
                                                 ("gpt_neox", ["query_key_value", "dense_4h_to_h"])])
def test_merge_parity_beyond_llama(tmp_path: Path, family: str, targets: list[str]) -> None:
    """GPT-2's Conv1D projections (fan-in/fan-out transposed) and GPT-NeoX's fused q/k/v merge to the same logits
    as base + adapter; a merge beyond the tolerance is refused."""
    from peftpipe.engines import engine_for
    from peftpipe.export import ExportError, export_stage
    from peftpipe.tiny_model import build_tiny_model, corpus_from_files
    from tests.conftest import EXAMPLE_DATA

    base = build_tiny_model(tmp_path / family, corpus_from_files([EXAMPLE_DATA]), family=family, vocab_size=512)
    spec = {"name": "tiny", "engine": "hf", "peft": {"method": "lora"},
            "dataset": {"prompt_template": "{input}\nAnswer: {output}"}}
    store = tmp_path / "store"
    publish_random_adapter(store, "family-run", base, spec, {"repo_id": None, "path": str(base)}, targets, tmp_path)
    # Beyond the tolerance, the export fails with the figure and leaves no merged model behind.
    with pytest.raises(ExportError, match=r"max \|logit diff\| .* \(tolerance 0, float32\)"):
        export_stage(open_store(f"file://{store}"), "family-run", tmp_path / "export", engine_for, merge=True,
                     tolerance=0.0, to_store=False)
    assert not (tmp_path / "export" / "merged").exists()
    summary = export_stage(open_store(f"file://{store}"), "family-run", tmp_path / "export", engine_for, merge=True)
    assert summary["parity"]["max_abs_logit_diff"] <= 1e-3 and summary["parity"]["generations_equal"]
    config = json.loads((tmp_path / "export" / "merged" / "config.json").read_text())
    assert config["model_type"] == family and "peft" not in json.dumps(config).lower()


def test_export_flow_adds_the_export_to_the_run(tmp_path: Path, hub_root: Path, hub_endpoint: str,
                                                prefect_api) -> None:
    """The `export` flow (deployment export/adapter) runs the same export as a Prefect task."""
    from flows.export import export_run
    from peftpipe.hub.mirror import MirrorRoot
    from peftpipe.validation import load_spec

    store = tmp_path / "store"
    spec_path = write_spec(tmp_path / "spec", {"model.endpoint": hub_endpoint, "artifacts.store": f"file://{store}",
                                               "model.cache_dir": str(tmp_path / "hf-cache"),
                                               "workdir": str(tmp_path / "runs")})
    sha = MirrorRoot(hub_root).commit_sha(TINY_REPO_ID)
    publish_random_adapter(store, "run-2", hub_root / TINY_REPO_ID, load_spec(spec_path).spec.model_dump(mode="json"),
                           {"repo_id": TINY_REPO_ID, "commit_sha": sha}, ["q_proj", "v_proj"], tmp_path)
    # The export folder already holds a user's file and an earlier merge: neither is published as this export.
    out = tmp_path / "runs" / "run-2" / "export"
    (out / "merged").mkdir(parents=True)
    (out / "merged" / "config.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    state = export_run(run_id="run-2", spec_path=str(spec_path), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    summary = state.result()
    assert summary["merged"] is None and (out / "adapter" / "README.md").is_file()
    keys = {o["key"] for o in json.loads((store / "run-2" / "manifest.json").read_text())["objects"]}
    assert "export/adapter/adapter_model.safetensors" in keys
    assert not {k for k in keys if k.startswith("export/") and not k.startswith("export/adapter/")}, keys
    assert (out / "notes.txt").read_text() == "mine" and not (out / "merged").exists()

    unknown = export_run(run_id="no-such-run", spec_path=str(spec_path), return_state=True)
    assert unknown.is_failed() and "not in the artifact store" in str(unknown.result(raise_on_failure=False))
