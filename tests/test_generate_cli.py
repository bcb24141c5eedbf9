"""`peftpipe generate RUN_ID`: a published adapter, fetched by the base it names, answers like the evaluate stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from peftpipe.artifacts import publish_directory
from peftpipe.engines.hf import command
from peftpipe.hub.adapter_reference import point_at_hub
from peftpipe.stores import open_store
from tests.conftest import TINY_REPO_ID
from tests.test_hf_engine import make_run, run_script


def test_generate_answers_as_the_evaluate_stage_does(tmp_path: Path, hub_root: Path, hub_endpoint: str) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    changes = {"model.endpoint": hub_endpoint, "model.cache_dir": str(tmp_path / "hf-cache"),
               "artifacts.store": f"file://{tmp_path / 'store'}"}
    paths, _, generation = make_run(tmp_path, hub_root, changes)
    # An adapter with random (non-zero) LoRA weights, so that it visibly changes the base model's answers.
    base = AutoModelForCausalLM.from_pretrained(hub_root / TINY_REPO_ID)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(paths.adapter_dir)
    assert point_at_hub(paths.adapter_dir, TINY_REPO_ID, None)
    generation.update(max_records=3)
    evaluated = run_script(command.GENERATE_MODULE, generation, paths.stage_config("evaluate"))
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    expected = [json.loads(line) for line in paths.predictions_file.read_text().splitlines()]

    files = {f"adapter/{p.name}": p for p in paths.adapter_dir.iterdir()}
    publish_directory(open_store(f"file://{tmp_path / 'store'}"), "run-1", files, {})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input": row["input"]}) + "\n" for row in expected[:2]))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-m", "peftpipe", "generate", "run-1", "--spec",
                             str(tmp_path / "spec" / "spec.yaml"), "--file", str(prompts), "--prompt",
                             expected[2]["input"]], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    # --prompt first, then the file's records, each answered exactly as the evaluate stage answered it.
    assert [a["input"] for a in answers] == [row["input"] for row in expected[2:] + expected[:2]]
    assert [a["pred"] for a in answers] == [row["pred"] for row in expected[2:] + expected[:2]]
    # The base was fetched through the Hub by the repo id the adapter names, not a local path.
    assert list((tmp_path / "hf-cache").glob("models--peftpipe--tiny-llama*"))

    missing = subprocess.run([sys.executable, "-m", "peftpipe", "generate", "no-such-run", "--spec",
                              str(tmp_path / "spec" / "spec.yaml"), "--prompt", "hi"],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "no-such-run" in missing.stderr and "Traceback" not in missing.stderr
