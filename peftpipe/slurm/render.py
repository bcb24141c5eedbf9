"""Batch scripts from job requests: pure functions, covered by golden-file tests.

Every word of the job's command comes from an argument list and is quoted here; the only
shell text the renderer writes itself is fixed (``set -euo pipefail``, the rendezvous host).
A word that must be expanded by the job's shell (``${SLURM_JOB_ID}``) is an :class:`Expand`,
whose template is checked so that nothing but variable references can be expanded.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from peftpipe.secret_env import ENV_NAME_PATTERN
from peftpipe.spec import ContainerSpec

_EXPANDABLE = re.compile(r"^(?:[A-Za-z0-9_./:=,@%+-]|\$\{[A-Z_][A-Z0-9_]*\})*$")


@dataclass(frozen=True)
class Expand:
    """One shell word with ``${VAR}`` references that the job's shell expands."""

    template: str

    def __post_init__(self) -> None:
        if not _EXPANDABLE.match(self.template):
            raise ValueError(f"{self.template!r} may only combine plain characters and ${{VAR}} references")


Word = str | Expand


def quote(word: Word) -> str:
    if isinstance(word, Expand):
        return f'"{word.template}"'
    return shlex.quote(word)


@dataclass(frozen=True)
class JobRequest:
    """Everything a batch script says: resources, environment and the per-task program."""

    job_name: str
    output: Path
    program: list[Word]
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str = "4G"
    time_limit: str = "01:00:00"
    signal_lead_s: int = 120
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpu_type: str | None = None
    rendezvous: bool = False
    workdir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    container: ContainerSpec = field(default_factory=ContainerSpec)
    binds: list[str] = field(default_factory=list)
    description: str = ""


def sbatch_directives(job: JobRequest) -> list[tuple[str, str]]:
    """``#SBATCH`` options in a fixed order: identity, placement, resources, time, behaviour."""
    directives: list[tuple[str, str | None]] = [
        ("job-name", job.job_name),
        ("output", str(job.output)),
        ("chdir", str(job.workdir) if job.workdir else None),
        ("partition", job.partition),
        ("account", job.account),
        ("qos", job.qos),
        ("constraint", job.constraint),
        ("nodes", str(job.nodes)),
        ("ntasks-per-node", str(job.tasks_per_node)),
        ("cpus-per-task", str(job.cpus_per_task)),
    ]
    if job.gpus_per_node:
        if job.gpu_type:
            directives.append(("gres", f"gpu:{job.gpu_type}:{job.gpus_per_node}"))
        else:
            directives.append(("gpus-per-node", str(job.gpus_per_node)))
    directives += [
        ("mem", job.mem),
        ("time", job.time_limit),
        # SIGTERM to every step ahead of the limit: training saves a checkpoint and exits.
        ("signal", f"TERM@{job.signal_lead_s}"),
        # A stage whose dependency failed is removed from the queue, not left pending forever.
        ("kill-on-invalid-dep", "yes"),
    ]
    return [(name, value) for name, value in directives if value is not None]


def container_words(job: JobRequest) -> tuple[list[Word], list[Word]]:
    """(extra srun options, words before the program) for the container runtime."""
    container = job.container
    mounts = _unique([*job.binds, *container.mounts])
    if container.runtime == "singularity":
        words: list[Word] = ["singularity", "exec", "--nv"]
        if mounts:
            words += ["--bind", ",".join(mounts)]
        return [], [*words, str(container.image)]
    if container.runtime == "pyxis":
        options: list[Word] = [f"--container-image={container.image}"]
        if mounts:
            options.append("--container-mounts=" + ",".join(m if ":" in m else f"{m}:{m}" for m in mounts))
        options.append("--no-container-mount-home")
        if job.workdir:
            options.append(f"--container-workdir={job.workdir}")
        return options, []
    return [], []


def launch_lines(job: JobRequest) -> list[list[Word]]:
    """The step's command as a person would lay it out: srun, container options, the program."""
    srun_options, wrapper = container_words(job)
    # One dead rank ends the step at once instead of leaving the others in an NCCL wait.
    srun: list[Word] = ["srun", "--kill-on-bad-exit=1", f"--nodes={job.nodes}",
                        f"--ntasks-per-node={job.tasks_per_node}"]
    lines = [srun, *([option] for option in srun_options)]
    if wrapper:
        lines.append(wrapper)
    return lines + program_lines(job.program)


def program_lines(program: list[Word]) -> list[list[Word]]:
    """The interpreter and launcher on one line, the script on the next, one Hydra override per line."""
    lines: list[list[Word]] = [[]]
    for index, word in enumerate(program):
        text = word.template if isinstance(word, Expand) else word
        starts_script = index > 1 and (text.endswith(".py") or (text == "-m" and index > 1))
        is_override = "=" in text and not text.startswith("-")
        if lines[-1] and (starts_script or is_override):
            lines.append([])
        lines[-1].append(word)
    return lines


def render_batch_script(job: JobRequest) -> str:
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{name}={quote(value)}" for name, value in sbatch_directives(job)]
    lines.append("")
    if job.description:
        lines += [f"# {line}" for line in job.description.splitlines()]
    lines += ["set -euo pipefail", ""]
    for name, value in job.env.items():
        # A name cannot be quoted: anything but a variable name would be shell code in `export`.
        if not ENV_NAME_PATTERN.match(name):
            raise ValueError(f"job environment name {name!r} is not a variable name (letters, digits and _, not"
                             " starting with a digit); refusing to write it into a batch script")
        lines.append(f"export {name}={quote(value)}")
    if job.rendezvous:
        # The first node of the allocation hosts the rendezvous; the port follows the job id so
        # that two jobs sharing a node do not collide.
        lines.append('export MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"')
        lines.append('export MASTER_PORT="$((20000 + SLURM_JOB_ID % 20000))"')
    lines += ["", 'echo "peftpipe: job ${SLURM_JOB_ID} on $(hostname) started $(date --iso-8601=seconds)"', ""]
    groups = [" ".join(quote(word) for word in group) for group in launch_lines(job)]
    lines.append(" \\\n    ".join(groups))
    return "\n".join(lines) + "\n"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
