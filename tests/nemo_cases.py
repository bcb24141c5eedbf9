"""Shared inputs of the nemo engine's tests: the two seed examples, fixed run paths, rendering helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from peftpipe.engines.nemo import jobs
from peftpipe.engines.nemo.convert import read_hf_config
from peftpipe.engines.nemo.layout import NemoPaths
from peftpipe.paths import RunPaths
from peftpipe.slurm.jobs import SOURCE_ROOT
from peftpipe.slurm.render import render_batch_script
from peftpipe.spec import LoadedSpec
from peftpipe.validation import load_spec
from tests.conftest import REPO

EXAMPLES = REPO / "examples" / "nemo"
LLAMA = EXAMPLES / "llama2-7b-squad" / "spec.yaml"
MISTRAL = EXAMPLES / "mistral-7b-pubmedqa" / "spec.yaml"
STANDIN_ROOT = REPO / "tests" / "nemo_standin" / "NeMo"
RUN_ID = "golden"
RUN = RunPaths(Path("/scratch/peftpipe/runs/golden"))
# Where the checkpoints live on the seed cluster; the example directories only hold their config.json.
CLUSTER_MODELS = {LLAMA: Path("/shared/models/Llama-2-7b-hf"), MISTRAL: Path("/shared/models/Mistral-7B-v0.1")}
HOST_PYTHON = "/opt/peftpipe/.venv/bin/python"


def load(spec: Path, overrides: dict[str, Any] | None = None) -> LoadedSpec:
    return load_spec(spec, overrides)


def hf_config(spec: Path) -> dict[str, Any]:
    return read_hf_config(spec.parent / "model")


def commands(loaded: LoadedSpec, spec: Path, paths: NemoPaths) -> list[jobs.NemoCommand]:
    return [jobs.convert_command(loaded, paths, CLUSTER_MODELS[spec], hf_config(spec)),
            jobs.finetune_command(loaded, paths), jobs.generate_command(loaded, paths)]


def batch_script(loaded: LoadedSpec, spec: Path, command: jobs.NemoCommand, attempt: int = 1) -> str:
    model_dir = CLUSTER_MODELS[spec] if command.stage == "convert" else None
    job = jobs.job_request(loaded, RUN_ID, RUN, command, attempt, host_python=HOST_PYTHON, model_dir=model_dir,
                           hf_config=hf_config(spec))
    # peftpipe's own checkout is bound into containers; its path differs between machines.
    return render_batch_script(job).replace(str(SOURCE_ROOT), "<peftpipe checkout>")


def run_standin(command: jobs.NemoCommand, profile: str, extra_env: dict[str, str] | None = None,
                args: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run a rendered command's script args against the stand-in, as a job would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEMO_STANDIN_", "SLURM_", "WORLD_SIZE"))}
    env.update({"NEMO_STANDIN_PROFILE": profile, **(extra_env or {})})
    script_args = command.script_args if args is None else [command.script, *args]
    return subprocess.run([sys.executable, *script_args], env=env, capture_output=True, text=True, timeout=120)


def write_data(run: RunPaths, records: int = 6) -> None:
    """train/validation/test JSONL as prepare-data writes them."""
    for split in ("train", "validation", "test"):
        path = run.data_file(split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"input": f"Context: c{i}\nQuestion: q{i}?", "output": f"Answer {i}",
                                            "id": f"{split}-{i}"}) + "\n" for i in range(records)))
