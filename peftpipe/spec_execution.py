"""The run spec's ``execution`` section: local processes or Slurm jobs, and how those are asked for."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from peftpipe.secret_env import env_name_problem, is_credential_name
from peftpipe.spec_base import StrictModel

MEMORY_PATTERN = re.compile(r"^(\d+)([MG])$")
TIME_PATTERN = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")


def memory_mb(text: str) -> int:
    """``64G`` / ``4000M`` in megabytes (Slurm's units: 1G = 1024M)."""
    match = MEMORY_PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a memory size")
    number, unit = int(match.group(1)), match.group(2)
    return number * 1024 if unit == "G" else number


def memory_text(mb: int) -> str:
    """Megabytes as Slurm's ``--mem`` takes them, exactly: ``4096`` -> ``4G``, ``4000`` -> ``4000M``."""
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"


def time_limit_s(text: str) -> int:
    match = TIME_PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time limit")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class ContainerSpec(StrictModel):
    """The container a Slurm job's command runs in."""

    runtime: Literal["none", "singularity", "pyxis"] = Field(
        "none", description="none: the flow's Python on a shared file system; singularity: `singularity exec --nv`;"
                            " pyxis: `srun --container-image`."
    )
    image: str | None = Field(None, description="A .sif file (singularity) or a registry image such as"
                                                 " nvcr.io#nvidia/nemo:24.03 (pyxis).",
                              examples=["/shared/images/nemo-24.03.sif"])
    mounts: list[str] = Field(default_factory=list, description="SRC[:DST] paths to bind; the run directory and"
                                                                " the model are bound automatically.",
                                  examples=[["/scratch/models"]])
    python: str = Field("python", description="The Python interpreter inside the container.",
                        examples=["python3"])


class SlurmSpec(StrictModel):
    """Per-cluster job settings; the GPU count per node and the node count come from `train`."""

    partition: str | None = Field(None, description="Partition (-p); default: the cluster's default partition.",
                                   examples=["gpu"])
    account: str | None = Field(None, description="Account to charge (-A).", examples=["nlp-lab"])
    qos: str | None = Field(None, description="Quality of service (--qos).", examples=["normal"])
    time_limit: str = Field("04:00:00", description="Wall time per job, [D-]HH:MM:SS.", examples=["1-00:00:00"])
    mem: str = Field("32G", description="Host memory per node, e.g. 64G or 4000M.", examples=["64G"])
    max_mem: str | None = Field(None, description="The partition's memory per node: an out-of-host-memory retry"
                                                  " may raise `mem` up to this once.", examples=["256G"])
    cpus_per_task: int = Field(8, gt=0, description="CPU cores per task (data loading, tokenisation).")
    gpu_type: str | None = Field(None, description="GPU type in the cluster's gres names, e.g. h100"
                                                   " (--gres=gpu:h100:N); default: any GPU (--gpus-per-node).",
                                    examples=["h100"])
    gpu_memory_gb: float = Field(80.0, gt=0, description="Memory of one GPU of that type, for the preflight"
                                                         " memory estimate.")
    constraint: str | None = Field(None, description="Node features (--constraint).", examples=["ib&h100"])
    launcher: Literal["torchrun", "srun"] = Field(
        "torchrun", description="torchrun: one task per node running torchrun; srun: one task per GPU."
    )
    signal_lead_s: int = Field(120, ge=10, description="SIGTERM this long before the time limit so training"
                                                       " saves a checkpoint.")
    poll_max_interval_s: float = Field(30.0, ge=2.0, description="Cap of the back-off between status queries.")
    status_outage_s: float = Field(1800.0, gt=0, description="How long the watcher keeps asking when neither"
                                                             " sacct nor squeue/scontrol answer before it gives"
                                                             " up (the job is never cancelled for that).")
    gpu_job_limit: str = Field("peftpipe-gpu-jobs", description="Name of the Prefect global concurrency limit"
                                                                " that caps GPU jobs in the queue.")
    container: ContainerSpec = Field(default_factory=ContainerSpec, description="The container jobs run in.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for every job (never"
                                                                  " secrets: those stay with the flow).",
                                examples=[{"NCCL_DEBUG": "WARN"}])

    @field_validator("mem", "max_mem")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and MEMORY_PATTERN.match(value) is None:
            raise ValueError(f"{value!r} is not a memory size. Fix: write it like 64G or 4000M")
        return value

    @field_validator("time_limit")
    @classmethod
    def _time(cls, value: str) -> str:
        if TIME_PATTERN.match(value) is None:
            raise ValueError(f"{value!r} is not a time limit. Fix: write it as HH:MM:SS or D-HH:MM:SS")
        return value

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            problem = env_name_problem(name)
            if problem and is_credential_name(name):
                raise ValueError(f"{name} {problem} and would be written into job scripts. Fix: keep it in a"
                                 " Prefect Secret block or the worker's environment")
            if problem:
                raise ValueError(f"{name!r} {problem}. Fix: rename it, e.g. MY_SETTING")
        return env


class ExecutionSpec(StrictModel):
    """Where the fine-tune and evaluate stages run."""

    backend: Literal["local", "slurm"] = Field(
        "local", description="Where the fine-tune and evaluate stages run: local subprocesses or Slurm jobs."
    )
    slurm: SlurmSpec = Field(default_factory=SlurmSpec, description="Job settings (backend slurm).")
    slurm_block: str | None = Field(None, description="Name of a Slurm Cluster block (blocks/slurm_cluster.py)"
                                                      " whose settings are defaults under execution.slurm.",
                                    examples=["lab-cluster"])
