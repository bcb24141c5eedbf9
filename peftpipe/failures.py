"""Why did a job end? A pure diagnosis from the Slurm state, the exit code and the log tail.

The signatures (:mod:`peftpipe.failure_signatures`) come from real logs, each kept with its
public source in tests/data/failure_corpus.yaml, plus ../shared/reference/nemo.md section 5 and
NeMo's own start-up errors. When a log shows several failures, the root cause wins: an OOM on
one rank beats the NCCL timeout or SIGTERM it caused on the others.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from peftpipe.failure_signatures import FATAL_AT_ONCE, SIGNATURES, STEP_LINE, FailureKind, Signature

__all__ = ["Diagnosis", "FailureKind", "diagnose", "fatal_line"]


@dataclass(frozen=True)
class Diagnosis:
    kind: FailureKind
    evidence: str

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "kind": self.kind.value}


_RANK_PREFIX = re.compile(r"^\[(default)?rank\d+\]:\s*")


def fatal_line(line: str) -> str | None:
    """The line itself if it shows a failure no rank recovers from (a stop rule for watchers)."""
    clean = _RANK_PREFIX.sub("", line).strip()
    if clean.startswith("raise "):
        return None  # a traceback's source line; the message itself follows it
    for signature in SIGNATURES:
        if signature.kind in FATAL_AT_ONCE and signature.states is None and signature.pattern.search(clean):
            return clean
    return None


_LAUNCHER_NOISE = re.compile(r"^(srun|slurmstepd):")
# torchrun's closing report (a rule of '=' signs, "Root Cause", "exitcode: 1", "error_file: <N/A>") says
# that a rank failed, never why; the rank's own exception line, printed above it, does.
_BANNER = re.compile(r"^[=\-*]{5,}$|^(Root Cause|Failures|exitcode|error_file|traceback|time|host|rank|local_rank)\b")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)\b(?::|$)")

STATE_KINDS = {
    "OUT_OF_MEMORY": FailureKind.HOST_OOM,
    "TIMEOUT": FailureKind.TIMEOUT,
    "PREEMPTED": FailureKind.PREEMPTED,
    "NODE_FAIL": FailureKind.NODE_FAIL,
}


def diagnose(slurm_state: str | None, exit_code: int | None, log_tail: str) -> Diagnosis:
    """The kind of failure and the one line that shows it.

    ``slurm_state`` is sacct's State (``CANCELLED by 0`` is read as ``CANCELLED``); it may be
    None for local runs. A completed job with exit code 0 is ``none`` whatever its log says.
    """
    state = (slurm_state or "").split(" ")[0].upper()
    if state == "COMPLETED" or (exit_code == 0 and state == ""):
        return Diagnosis(FailureKind.NONE, "")
    lines = [_RANK_PREFIX.sub("", line).strip() for line in log_tail.splitlines()]
    for signature in SIGNATURES:
        if signature.kind is FailureKind.COMM_TIMEOUT and state in STATE_KINDS:
            continue  # the scheduler's own verdict beats a watchdog line its kill caused
        if signature.states is not None and state not in signature.states:
            continue
        found = _last_match(signature, lines)
        if found is not None:
            return Diagnosis(signature.kind, _with_context(signature.kind, lines, found))
    if state in STATE_KINDS:
        return Diagnosis(STATE_KINDS[state], f"Slurm state {slurm_state}")
    return Diagnosis(FailureKind.UNKNOWN, _unknown_evidence(lines) or f"exit code {exit_code}, state {slurm_state or 'unknown'}")


def _unknown_evidence(lines: list[str]) -> str:
    """The last exception a rank raised, else the last line that is not the launcher's own report."""
    exception = next((line for line in reversed(lines)
                      if _EXCEPTION_LINE.match(line) and "ChildFailedError" not in line), None)  # torchrun's own
    if exception is not None:
        return exception
    # srun's and slurmstepd's own lines report that a task ended, not why.
    return next((line for line in reversed(lines)
                 if line and not _LAUNCHER_NOISE.match(line) and not _BANNER.match(line)), "")


def _last_match(signature: Signature, lines: list[str]) -> int | None:
    """Index of the last matching line (a traceback shows the raising source line before the message)."""
    for index in range(len(lines) - 1, -1, -1):
        if signature.pattern.search(lines[index]):
            if signature.after_healthy_steps and not any(STEP_LINE.search(line) for line in lines[:index]):
                continue
            return index
    return None


_PATH_IN_LINE = re.compile(r"""['"](/[^'"]+|[^'"\s]+/[^'"]*)['"]|\s(/\S+)""")
_SAVING_TO = re.compile(r"(?i)(?:sav\w* .*?(?:to|at|in)|checkpoint.*?:)\s+(\S+/\S*)")


def _with_context(kind: FailureKind, lines: list[str], index: int) -> str:
    """The matching line, with the step of a non-finite loss or the path of a full file system."""
    line = lines[index]
    if kind is FailureKind.NAN_LOSS and not STEP_LINE.search(line):
        step = next((m for m in (STEP_LINE.search(prior) for prior in reversed(lines[:index])) if m), None)
        if step is not None:
            return f"{line} (after step {step.group(1)})"
    if kind is FailureKind.STORAGE_FULL and not _PATH_IN_LINE.search(line):
        saving = next((m for m in (_SAVING_TO.search(prior) for prior in reversed(lines[:index])) if m), None)
        if saving is not None:
            return f"{line} (writing {saving.group(1)})"
    return line
