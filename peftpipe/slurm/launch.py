"""How a program runs on several ranks: torchrun per node, or one task per rank under srun."""

from __future__ import annotations

from peftpipe.slurm.render import Expand, Word


def distributed_program(python: str, script_args: list[str], nodes: int, ranks_per_node: int,
                        launcher: str) -> tuple[list[Word], int, bool]:
    """(program per task, tasks per node, needs a rendezvous host) for the launcher.

    ``script_args`` is what follows the interpreter: ``-m module ...`` or ``script.py ...``.
    """
    if ranks_per_node * nodes == 1 or launcher == "srun":
        return [python, *script_args], ranks_per_node, nodes * ranks_per_node > 1
    torchrun: list[Word] = [python, "-m", "torch.distributed.run"]
    if nodes == 1:
        torchrun += ["--standalone", f"--nproc_per_node={ranks_per_node}"]
        return [*torchrun, *script_args], 1, False
    torchrun += [f"--nnodes={nodes}", f"--nproc_per_node={ranks_per_node}", "--rdzv_backend=c10d",
                 Expand("--rdzv_id=${SLURM_JOB_ID}"), Expand("--rdzv_endpoint=${MASTER_ADDR}:${MASTER_PORT}")]
    return [*torchrun, *script_args], 1, True
