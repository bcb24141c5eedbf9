"""Batch scripts for the three container runtimes, compared with reviewed golden files."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from peftpipe.engines.hf import command
from peftpipe.paths import RunPaths
from peftpipe.slurm.jobs import stage_job
from peftpipe.slurm.render import Expand, JobRequest, render_batch_script
from peftpipe.validation import SpecError, load_spec
from tests.conftest import write_spec
from tests.golden_files import assert_matches_golden

RUN_ID = "squad-lora-20261123-120000"
RUN = RunPaths(Path("/scratch/runs") / RUN_ID)
MODEL = Path("/scratch/models/llama-2-7b-hf")
NEMO_FINETUNE = "/opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py"
# A NeMo-style fine-tune as the NeMo engine passes it: script and Hydra overrides.
NEMO_ARGS = [
    NEMO_FINETUNE,
    "trainer.devices=4",
    "trainer.num_nodes=1",
    "trainer.precision=16",
    "model.restore_from_path=/scratch/models/llama-2-7b.nemo",
    "model.tensor_model_parallel_size=4",
    "model.peft.peft_scheme=lora",
    "model.data.train_ds.file_names=[/scratch/runs/squad-lora-20261123-120000/data/train.jsonl]",
    "model.data.train_ds.prompt_template={input} {output}",
]


def slurm_spec(tmp_path: Path, changes: dict) -> Path:
    base = {"execution.backend": "slurm", "execution.slurm": {"partition": "gpu", "account": "nlp-lab",
                                                              "mem": "64G", "time_limit": "08:00:00",
                                                              **changes.pop("slurm", {})}}
    return write_spec(tmp_path, {**base, **changes})


def test_hf_without_container(tmp_path: Path) -> None:
    loaded = load_spec(slurm_spec(tmp_path, {"train.devices": 2}))
    args = command.training_script_args(RUN.stage_config("finetune", 2))
    job = stage_job(loaded.spec, RUN_ID, RUN, "finetune", 2, args, host_python="/shared/envs/peftpipe/bin/python",
                    gpus_per_node=2, model_path=MODEL)
    assert_matches_golden("slurm_hf_none.sbatch", render_batch_script(job))


def test_nemo_under_singularity(tmp_path: Path) -> None:
    loaded = load_spec(slurm_spec(tmp_path, {"slurm": {
        "launcher": "srun", "gpu_type": "v100", "mem": "320G",
        "container": {"runtime": "singularity", "image": "/shared/images/nemo-24.03.sif",
                      "mounts": ["/scratch/models"]}}}))
    job = stage_job(loaded.spec, RUN_ID, RUN, "finetune", 1, NEMO_ARGS, host_python="/usr/bin/python3",
                    gpus_per_node=4, model_path=MODEL)
    assert_matches_golden("slurm_nemo_singularity.sbatch", render_batch_script(job))


def test_multi_node_under_pyxis(tmp_path: Path) -> None:
    loaded = load_spec(slurm_spec(tmp_path, {"train.devices": 4, "train.num_nodes": 2, "train.global_batch_size": 64,
                                             "slurm": {"gpu_type": "h100", "container": {
                                                 "runtime": "pyxis", "image": "nvcr.io#nvidia/nemo:24.07",
                                                 "mounts": ["/lustre/datasets:/data"]}}}))
    job = stage_job(loaded.spec, RUN_ID, RUN, "finetune", 3, NEMO_ARGS, host_python="/usr/bin/python3",
                    gpus_per_node=4, nodes=2, mem="96G", model_path=MODEL)
    assert_matches_golden("slurm_nemo_pyxis_two_nodes.sbatch", render_batch_script(job))


def test_every_word_survives_the_shell_unchanged(tmp_path: Path) -> None:
    """Spaces, quotes and dollars in paths and values reach the program as they were written."""
    awkward = ["-c", "print('it''s $HOME; `id`')", "/data/my runs/x.json", "--flag=a b"]
    job = JobRequest(job_name="peftpipe-x-finetune", output=Path("/data/my runs/slurm-%j.out"),
                     program=["python", *awkward], env={"NOTE": "two words $HOME"})
    script = render_batch_script(job)
    launch = script.rsplit("\n\n", 1)[1].replace("\\\n", " ")
    words = shlex.split(launch)
    assert words[-len(awkward):] == awkward
    assert "export NOTE='two words $HOME'" in script
    assert "#SBATCH --output='/data/my runs/slurm-%j.out'" in script


def test_expand_allows_only_variable_references() -> None:
    assert Expand("--rdzv_endpoint=${MASTER_ADDR}:${MASTER_PORT}")
    for unsafe in ["$(id)", "${HOME}; rm -rf /", "`id`", "a b"]:
        with pytest.raises(ValueError):
            Expand(unsafe)


def test_secrets_stay_out_of_job_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-456")
    loaded = load_spec(slurm_spec(tmp_path, {}))
    job = stage_job(loaded.spec, RUN_ID, RUN, "finetune", 1, ["-m", "x"], host_python="python", gpus_per_node=1)
    script = render_batch_script(job)
    assert "hf_secret_value_123" not in script and "aws-secret-value-456" not in script
    with pytest.raises(SpecError, match=r"execution.slurm.env: HF_TOKEN looks like a secret"):
        load_spec(slurm_spec(tmp_path / "b", {"slurm": {"env": {"HF_TOKEN": "x"}}}))


@pytest.mark.parametrize(("changes", "message"), [
    ({"slurm": {"container": {"runtime": "pyxis"}}},
     "execution.slurm.container.image: is required for runtime pyxis. Fix: name the image"),
    ({"slurm": {"container": {"runtime": "singularity", "image": "nvcr.io#nvidia/nemo:24.03"}}},
     "is not a .sif file"),
    ({"slurm": {"mem": "64GB"}}, "execution.slurm.mem: '64GB' is not a memory size. Fix: write it like 64G"),
    ({"slurm": {"time_limit": "90"}}, "execution.slurm.time_limit: '90' is not a time limit"),
    ({"slurm": {"time_limit": "00:03:00"}}, "leaves no training time before the checkpoint signal"),
    ({"slurm": {"max_mem": "32G"}}, "execution.slurm.max_mem: 32G is below mem 64G"),
])
def test_bad_slurm_settings_fail_before_submission(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(SpecError, match=None) as caught:
        load_spec(slurm_spec(tmp_path, changes))
    assert message in str(caught.value)
