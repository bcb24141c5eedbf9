"""Failure diagnosis on real-format log tails, and the retry policy that follows from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from peftpipe.failures import FailureKind, diagnose
from peftpipe.retry import AttemptSettings, next_attempt, smaller_micro_batch

LOGS = Path(__file__).parent / "data" / "logs"

CASES = [
    ("gpu_oom_torch213_rank1.log", "FAILED", 1, FailureKind.GPU_OOM, "torch.OutOfMemoryError: CUDA out of memory. Tried"),
    ("gpu_oom_torch22_capacty.log", "FAILED", 1, FailureKind.GPU_OOM, "total capacty of 31.74 GiB"),
    ("gpu_oom_torch20.log", "FAILED", 1, FailureKind.GPU_OOM, "RuntimeError: CUDA out of memory. Tried to allocate 1.53"),
    ("gpu_oom_cublas.log", "FAILED", 1, FailureKind.GPU_OOM, "CUBLAS_STATUS_ALLOC_FAILED"),
    ("host_oom_cgroup.log", "OUT_OF_MEMORY", 0, FailureKind.HOST_OOM, "task 0: Out Of Memory"),
    ("host_oom_cpu_allocator.log", "FAILED", 1, FailureKind.HOST_OOM, "DefaultCPUAllocator: can't allocate memory"),
    ("host_oom_exceeded.log", "FAILED", 1, FailureKind.HOST_OOM, "Exceeded job memory limit"),
    ("timeout.log", "TIMEOUT", 0, FailureKind.TIMEOUT, "DUE TO TIME LIMIT"),
    ("preempted.log", "PREEMPTED", 0, FailureKind.PREEMPTED, "DUE TO PREEMPTION"),
    ("node_fail.log", "NODE_FAIL", 0, FailureKind.NODE_FAIL, "Slurm state NODE_FAIL"),
    ("comm_timeout.log", "FAILED", 134, FailureKind.COMM_TIMEOUT, "Watchdog caught collective operation timeout"),
    ("config_argparse.log", "FAILED", 2, FailureKind.CONFIG_ERROR, "unrecognized arguments: --in-file"),
    ("config_required.log", "FAILED", 2, FailureKind.CONFIG_ERROR, "the following arguments are required: --config"),
    ("config_hydra.log", "FAILED", 1, FailureKind.CONFIG_ERROR, "Key 'target_module' is not in struct"),
    ("config_spec.log", "FAILED", 2, FailureKind.CONFIG_ERROR, "invalid run spec"),
    ("nemo_missing_mandatory.log", "FAILED", 1, FailureKind.CONFIG_ERROR,
     "MissingMandatoryValue: Missing mandatory value: model.data.train_ds.file_names"),
    ("nemo_prompt_template.log", "FAILED", 1, FailureKind.CONFIG_ERROR,
     "AssertionError: {output} must be at the end of prompt_template."),
    ("nemo_multiple_last.log", "FAILED", 1, FailureKind.CONFIG_ERROR, "ValueError: Multiple checkpoints [PosixPath("),
    ("unknown.log", "FAILED", 139, FailureKind.UNKNOWN, "Segmentation fault (core dumped)"),
    # torchrun's closing report hides the cause: the rank's exception above it is the evidence.
    ("torchrun_unknown.log", "FAILED", 1, FailureKind.UNKNOWN, "KeyError: \"column 'context' not found\""),
    ("completed.log", "COMPLETED", 0, FailureKind.NONE, ""),
]


@pytest.mark.parametrize(("log", "state", "exit_code", "kind", "evidence"), CASES, ids=[c[0] for c in CASES])
def test_diagnosis_names_the_kind_and_the_line(log, state, exit_code, kind, evidence) -> None:
    diagnosis = diagnose(state, exit_code, (LOGS / log).read_text())
    assert diagnosis.kind is kind
    assert evidence in diagnosis.evidence


def test_oom_on_one_rank_wins_over_the_timeout_it_caused() -> None:
    diagnosis = diagnose("FAILED", 1, (LOGS / "gpu_oom_torch213_rank1.log").read_text())
    assert diagnosis.kind is FailureKind.GPU_OOM
    assert not diagnosis.evidence.startswith("[rank1]")  # torchrun's prefix is stripped from the evidence


def test_cancelled_state_with_suffix_is_read() -> None:
    assert diagnose("CANCELLED by 0", 0, (LOGS / "timeout.log").read_text()).kind is FailureKind.TIMEOUT


def test_cli_prints_one_json_object() -> None:
    result = CliRunner().invoke(app, ["diagnose", str(LOGS / "gpu_oom_torch22_capacty.log"), "--state", "FAILED",
                                      "--exit-code", "1"])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["kind"] == "gpu_oom"
    assert payload["evidence"].startswith("torch.cuda.OutOfMemoryError: CUDA out of memory.")


@pytest.mark.parametrize(("current", "gbs", "dp", "expected"),
                         [(8, 64, 1, 4), (4, 64, 1, 2), (2, 64, 1, 1), (1, 64, 1, None), (6, 36, 1, 4),
                          (8, 48, 2, 6), (5, 30, 3, 2)])
def test_smaller_micro_batch_keeps_the_global_batch(current, gbs, dp, expected) -> None:
    smaller = smaller_micro_batch(current, gbs, dp)
    assert smaller == expected
    if smaller:
        assert (gbs // dp) % smaller == 0


def test_gpu_oom_steps_down_then_checkpoints_activations_then_stops() -> None:
    oom = diagnose("FAILED", 1, (LOGS / "gpu_oom_torch20.log").read_text())
    settings, seen = AttemptSettings(attempt=1, micro_batch_size=8), []
    while (decision := next_attempt(oom, settings, global_batch_size=64, data_parallel=1, max_attempts=10)).retry:
        settings = decision.next
        seen.append((settings.micro_batch_size, settings.activation_checkpointing))
    assert seen == [(4, False), (2, False), (1, False), (1, True)]
    assert "more GPUs" in decision.reason and "max_seq_length" in decision.reason


def test_host_oom_raises_memory_once_within_the_limit() -> None:
    oom = diagnose("OUT_OF_MEMORY", 0, (LOGS / "host_oom_cgroup.log").read_text())
    first = next_attempt(oom, AttemptSettings(1, 4, mem_mb=64 * 1024), 64, 1, max_attempts=5,
                         mem_limit_mb=100 * 1024)
    assert first.next.mem_mb == 100 * 1024
    second = next_attempt(oom, first.next, 64, 1, max_attempts=5, mem_limit_mb=100 * 1024)
    assert not second.retry and "it needed more than 100 GB" in second.reason


@pytest.mark.parametrize("log", ["timeout.log", "preempted.log"])
def test_interruptions_resubmit_unchanged(log: str) -> None:
    state = "TIMEOUT" if log == "timeout.log" else "PREEMPTED"
    decision = next_attempt(diagnose(state, 0, (LOGS / log).read_text()), AttemptSettings(1, 4), 64, 1, 3)
    assert decision.next == AttemptSettings(2, 4)


def test_config_errors_and_the_attempt_limit_stop() -> None:
    config = diagnose("FAILED", 2, (LOGS / "config_argparse.log").read_text())
    assert not next_attempt(config, AttemptSettings(1, 4), 64, 1, 5).retry
    oom = diagnose("FAILED", 1, (LOGS / "gpu_oom_cublas.log").read_text())
    stopped = next_attempt(oom, AttemptSettings(3, 4), 64, 1, max_attempts=3)
    assert not stopped.retry and "attempt limit 3" in stopped.reason


def test_stop_rule_fires_on_the_message_not_the_traceback_source_line() -> None:
    from peftpipe.failures import fatal_line

    assert fatal_line("    raise torch.OutOfMemoryError(") is None
    assert fatal_line("[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB") == (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert fatal_line("slurmstepd: error: Exceeded job memory limit") is not None
    assert fatal_line("step 3/8 loss 1.2") is None
