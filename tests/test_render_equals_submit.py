"""`peftpipe render` prints byte for byte the batch script a run submits to Slurm.

For every engine x container runtime x launcher, the fine-tune stage runs through the real
Slurm backend on the test cluster; the script compared is the one Slurm itself stored for the
job (``scontrol write batch_script``), against ``peftpipe render`` for the same run id and
attempt. Each job is cancelled as soon as its first line appears: what is compared is what
was submitted, and the program (NeMo, a container runtime) need not exist here.
"""

from __future__ import annotations

import itertools
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.app import app
from peftpipe.attempts import first_attempt
from peftpipe.backends import SlurmBackend
from peftpipe.engines import engine_for
from peftpipe.results import StageFailed
from peftpipe.stages import run_paths
from peftpipe.validation import load_spec
from tests.conftest import REPO, write_spec

pytestmark = pytest.mark.slurm

RUNTIMES = {"none": None, "singularity": "/shared/images/peftpipe-test.sif", "pyxis": "nvcr.io#nvidia/nemo:24.03"}
LAUNCHERS = ("torchrun", "srun")
# Small enough for the one-node test cluster; 1000M is not whole gigabytes, so it must stay exact.
SLURM = {"mem": "1000M", "cpus_per_task": 1, "time_limit": "00:05:00", "poll_max_interval_s": 2,
         "partition": None, "account": None, "gpu_type": None, "max_mem": None}
NEMO_EXAMPLE = REPO / "examples" / "nemo" / "llama2-7b-squad"


def hf_spec(directory: Path, runtime: str, launcher: str) -> Path:
    model = directory / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}\n')
    return write_spec(directory, {
        "model.path": str(model), "model.repo_id": None, "workdir": str(directory / "runs"), "train.devices": 2,
        "execution.backend": "slurm",
        "execution.slurm": {**SLURM, "launcher": launcher,
                            "container": {"runtime": runtime, "image": RUNTIMES[runtime]}},
    })


def nemo_spec(directory: Path, runtime: str, launcher: str) -> Path:
    raw = yaml.safe_load((NEMO_EXAMPLE / "spec.yaml").read_text())
    raw["model"]["path"] = str(NEMO_EXAMPLE / "model")
    raw["dataset"]["path"] = str((NEMO_EXAMPLE / raw["dataset"]["path"]).resolve())
    raw["workdir"] = str(directory / "runs")
    raw["train"].update({"devices": 2, "global_batch_size": 8, "micro_batch_size": 4})
    raw["nemo"]["tensor_parallel_size"] = 2
    raw["execution"]["slurm"].update({**SLURM, "launcher": launcher,
                                      "container": {"runtime": runtime, "image": RUNTIMES[runtime]}})
    directory.mkdir(parents=True, exist_ok=True)
    spec = directory / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    return spec


SPECS = {"hf": hf_spec, "nemo": nemo_spec}
CASES = list(itertools.product(SPECS, RUNTIMES, LAUNCHERS))


def submit(spec: Path, run_id: str) -> str:
    """Run the fine-tune stage as a flow would, cancel the job at its first line; Slurm's copy of the script."""
    loaded = load_spec(spec)
    paths = run_paths(loaded, run_id)
    model_dir = loaded.resolve(loaded.spec.model.path)

    def first_line(line: str) -> str | None:
        return "the submitted script is recorded" if line.startswith("peftpipe: job") else None

    with pytest.raises(StageFailed):
        engine_for(loaded.spec.engine).finetune(loaded, paths, model_dir, first_attempt(loaded.spec),
                                                on_line=lambda line: None, backend=SlurmBackend(),
                                                stop_rule=first_line)
    job_id = paths.job_id_file("finetune", 1).read_text().strip()
    stored = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True, text=True,
                            check=True).stdout
    # The attempt's own copy, which a person reads and the store archives, is the same text.
    assert paths.job_script("finetune", 1).read_text() == stored
    return stored


def render(spec: Path, run_id: str) -> str:
    model_dir = yaml.safe_load(spec.read_text())["model"]["path"]
    result = CliRunner().invoke(app, ["render", str(spec), "--stage", "finetune", "--run-id", run_id,
                                      "--model-path", model_dir])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_render_is_what_slurm_received(tmp_path: Path, slurm_cluster: str) -> None:
    specs = {case: SPECS[case[0]](tmp_path / "-".join(case), *case[1:]) for case in CASES}
    # Run ids follow the run-id rule (lowercase letters, digits, dashes); tmp_path names hold `_`.
    suffix = tmp_path.name[-12:].lower().replace("_", "-")
    run_ids = {case: f"res-{'-'.join(case)}-{suffix}" for case in CASES}
    # Two jobs at a time fit the cluster's GPUs; the threads only wait on Slurm.
    with ThreadPoolExecutor(4) as pool:
        submitted = dict(zip(CASES, pool.map(lambda case: submit(specs[case], run_ids[case]), CASES)))
    for case in CASES:
        rendered = render(specs[case], run_ids[case])
        assert rendered == submitted[case], f"{case}: render differs from the submitted script"
    # The grid really varies what matters: the container wrapping and the launcher show in the scripts.
    scripts = {case: submitted[case] for case in CASES}
    assert "singularity exec" in scripts[("hf", "singularity", "torchrun")]
    assert "export PYTHONPATH=" in scripts[("hf", "singularity", "torchrun")]
    assert "--container-image=nvcr.io#nvidia/nemo:24.03" in scripts[("nemo", "pyxis", "srun")]
    assert "torch.distributed.run" in scripts[("hf", "none", "torchrun")]
    assert "torch.distributed.run" not in scripts[("hf", "none", "srun")]
    assert all("#SBATCH --mem=1000M\n" in script for script in scripts.values())
