"""From (run spec, stage, attempt) to a :class:`JobRequest`: names, resources, launcher, container."""

from __future__ import annotations

from pathlib import Path

from peftpipe.paths import RunPaths
from peftpipe.slurm.launch import distributed_program
from peftpipe.slurm.render import JobRequest
from peftpipe.spec import RunSpec

# peftpipe's own source tree: bound into containers and put on PYTHONPATH there, so the
# engine scripts run from the same code as the flow that rendered them.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def job_name(run_id: str, stage: str) -> str:
    return f"peftpipe-{run_id}-{stage}"


def job_name_prefix(run_id: str) -> str:
    return f"peftpipe-{run_id}-"


def stage_job(spec: RunSpec, run_id: str, paths: RunPaths, stage: str, attempt: int, script_args: list[str],
              *, host_python: str, gpus_per_node: int, nodes: int = 1, mem: str | None = None,
              model_path: Path | None = None, code_root: Path | None = None,
              exclude: tuple[str, ...] = ()) -> JobRequest:
    """The job that runs ``script_args`` for ``stage``: one rank per GPU on each node.

    ``code_root`` is peftpipe's source tree when the program is one of peftpipe's own engine
    scripts: a container gets it bound and on PYTHONPATH.
    """
    slurm = spec.execution.slurm
    container = slurm.container
    in_container = container.runtime != "none"
    python = container.python if in_container else host_python
    ranks = max(gpus_per_node, 1)
    program, tasks_per_node, rendezvous = distributed_program(python, script_args, nodes, ranks, slurm.launcher)
    env = {
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # The model was fetched before any job started; a job never reaches for the network.
        "HF_HUB_OFFLINE": "1",
        "PEFTPIPE_RUN_ID": run_id,
    }
    binds: list[str] = []
    if in_container:
        binds = [str(paths.root)]
        if code_root is not None:
            env["PYTHONPATH"] = str(code_root)
            binds.append(str(code_root))
        if model_path is not None:
            binds.append(str(model_path))
    env.update(slurm.env)
    return JobRequest(
        job_name=job_name(run_id, stage),
        output=paths.attempt_dir(stage, attempt) / "slurm-%j.out",
        program=program,
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        gpus_per_node=gpus_per_node,
        cpus_per_task=slurm.cpus_per_task,
        mem=mem or slurm.mem,
        time_limit=slurm.time_limit,
        signal_lead_s=slurm.signal_lead_s,
        partition=slurm.partition,
        account=slurm.account,
        qos=slurm.qos,
        constraint=slurm.constraint,
        exclude=exclude,
        gpu_type=slurm.gpu_type,
        rendezvous=rendezvous,
        workdir=paths.root,
        env=env,
        container=container,
        binds=binds,
        description=f"peftpipe run {run_id}: stage {stage}, attempt {attempt}.\n"
                    "Rendered from the run spec; change the spec, not this file.",
    )
