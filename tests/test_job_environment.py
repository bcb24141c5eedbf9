"""What reaches a job's environment (issue 18): names that are shell code, and credentials.

The injection and leak tests run real jobs on the one-node Slurm cluster and a local process
group: what they check is what the job's processes saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from peftpipe.backends import LocalBackend, SlurmBackend, StageCommand
from peftpipe.local_runner import job_environment
from peftpipe.paths import RunPaths
from peftpipe.slurm.client import SlurmClient
from peftpipe.slurm.render import JobRequest, render_batch_script
from peftpipe.validation import SpecError, load_spec
from tests.conftest import write_spec

CREDENTIALS = {  # name: a value that must never be seen by a job
    "HF_TOKEN": "hf_leak_1", "HUGGING_FACE_HUB_TOKEN": "hf_leak_2", "WANDB_API_KEY": "wandb_leak_3",
    "AWS_ACCESS_KEY_ID": "AKIALEAK4", "AWS_SECRET_ACCESS_KEY": "aws_leak_5", "AWS_SESSION_TOKEN": "aws_leak_6",
    "OPENAI_API_KEY": "openai_leak_7", "GITHUB_TOKEN": "gh_leak_8", "DB_PASSWORD": "db_leak_9",
    "GOOGLE_APPLICATION_CREDENTIALS": "gcp_leak_10", "SSH_PRIVATE_KEY": "ssh_leak_11", "COMET_APIKEY": "comet_leak_12",
    "MLFLOW_TRACKING_PASSWORD": "mlflow_leak_13", "STRIPE_SECRET": "stripe_leak_14", "PINECONE_KEY": "pc_leak_15",
}
SETTINGS = {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "4", "TOKENIZERS_PARALLELISM": "false", "MY_SETTING_2": "x"}
PRINT_ENV = "import os; [print(f'ENV {k}={v}') for k, v in sorted(os.environ.items())]"


def slurm_spec(tmp_path: Path, env: dict[str, str]) -> Path:
    return write_spec(tmp_path, {"execution.backend": "slurm",
                                 "execution.slurm": {"mem": "1G", "cpus_per_task": 1, "env": env}})


@pytest.mark.parametrize("name", sorted(CREDENTIALS))
def test_a_credential_name_in_execution_slurm_env_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError) as refused:
        load_spec(slurm_spec(tmp_path, {name: "x"}))
    assert f"execution.slurm.env: {name} looks like a secret" in str(refused.value)


def test_ordinary_settings_pass_and_the_same_list_filters_job_environments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_spec(slurm_spec(tmp_path, SETTINGS))
    assert loaded.spec.execution.slurm.env == SETTINGS
    for name, value in {**CREDENTIALS, **SETTINGS}.items():
        monkeypatch.setenv(name, value)
    env = job_environment()
    assert not set(CREDENTIALS) & set(env)
    assert all(env[name] == value for name, value in SETTINGS.items())


@pytest.mark.parametrize("name", ["A=1; touch {marker}; B", "X$(touch {marker})", "Y`touch {marker}`", "1ST",
                                  "A B", "A-B", "", "NEWLINE_AT_END\n"])
def test_an_env_name_that_is_not_a_variable_is_refused_by_validation(tmp_path: Path, name: str) -> None:
    hostile = name.format(marker=tmp_path / "PWNED")
    with pytest.raises(SpecError) as refused:
        load_spec(slurm_spec(tmp_path, {hostile: "x"}))
    assert f"execution.slurm.env: {hostile!r} is not a variable name" in str(refused.value)


def _wait(client: SlurmClient, job_id: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.status([job_id]).get(job_id)
        if status is not None and status.terminal:
            return
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s")


@pytest.mark.slurm
def test_an_env_name_never_runs_as_shell_code_in_a_real_job(tmp_path: Path, slurm_cluster: str) -> None:
    """Through validation and, for a job built without a spec, through the renderer: no job runs the name."""
    marker = tmp_path / "PWNED"
    hostile = f"A=1; touch {marker}; B"
    try:
        loaded = load_spec(slurm_spec(tmp_path / "spec", {hostile: "x"}))
    except SpecError as error:
        assert "is not a variable name" in str(error)
    else:  # what happened before: the job ran the command
        SlurmBackend().run(loaded, RunPaths(tmp_path / "runs" / "inject"), StageCommand("finetune", 1, ["-c", "1"]),
                           on_line=lambda line: None)
    assert not marker.exists(), "a job ran shell code from an execution.slurm.env name"

    job = JobRequest(job_name="peftpipe-test-inject", output=tmp_path / "inject-%j.out", program=["true"],
                     mem="256M", time_limit="00:05:00", signal_lead_s=30, env={hostile: "x"})
    try:
        script = render_batch_script(job)
    except ValueError as error:
        assert repr(hostile) in str(error) and "not a variable name" in str(error)
    else:
        path = tmp_path / "inject.sbatch"
        path.write_text(script)
        client = SlurmClient()
        _wait(client, client.submit(path))
    assert not marker.exists(), "the renderer wrote a job environment name that ran as shell code"


def _seen_environment(lines: list[str]) -> dict[str, str]:
    return dict(line[4:].split("=", 1) for line in lines if line.startswith("ENV ") and "=" in line)


@pytest.mark.slurm
def test_no_credential_reaches_a_slurm_job_or_a_local_process(tmp_path: Path, slurm_cluster: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the rest of the AWS settings: jobs need none
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    loaded = load_spec(slurm_spec(tmp_path / "spec", {"NCCL_DEBUG": "INFO"}))
    seen: dict[str, dict[str, str]] = {}
    for label, backend in (("slurm", SlurmBackend()), ("local", LocalBackend())):
        lines: list[str] = []
        outcome = backend.run(loaded, RunPaths(tmp_path / "runs" / f"env-{label}"),
                              StageCommand("finetune", 1, ["-c", PRINT_ENV]), on_line=lines.append)
        assert outcome.succeeded, outcome.log_tail
        seen[label] = _seen_environment(outcome.log_file.read_text().splitlines())
        assert "PATH" in seen[label], f"{label}: the job's environment was not printed"
        leaked = {name for name, value in seen[label].items()
                  if name in CREDENTIALS or name.startswith("AWS_") or value in CREDENTIALS.values()}
        assert not leaked, f"{label} job saw {sorted(leaked)}"
    assert seen["slurm"].get("NCCL_DEBUG") == "INFO"
