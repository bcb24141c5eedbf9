"""`peftpipe diagnose` against real failure logs, each from a public issue or page (tests/data/failure_corpus.yaml).

Run as a script (``python -m tests.test_failure_corpus``) it prints the confusion table by kind.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from peftpipe.failures import FailureKind, diagnose

CORPUS = Path(__file__).parent / "data" / "failure_corpus.yaml"
ENTRIES = yaml.safe_load(CORPUS.read_text())


def confusion() -> Counter[tuple[str, str]]:
    return Counter((entry["kind"], diagnose(entry["state"] or None, entry["exit_code"], entry["log"]).kind.value)
                   for entry in ENTRIES)


def confusion_table() -> str:
    counts = confusion()
    kinds = [kind.value for kind in FailureKind if any(kind.value in pair for pair in counts)]
    rows = ["| expected \\ diagnosed | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for expected in kinds:
        rows.append(f"| {expected} | " + " | ".join(str(counts.get((expected, got), "")) for got in kinds) + " |")
    return "\n".join(rows)


def test_the_corpus_has_forty_real_signatures_with_public_sources() -> None:
    failures = [e for e in ENTRIES if e["kind"] != "none"]
    assert len(failures) >= 40
    assert all(e["source"].startswith("https://") for e in ENTRIES)
    assert len({e["id"] for e in ENTRIES}) == len(ENTRIES)
    # Every kind a retry decision depends on is represented by real logs.
    assert {e["kind"] for e in ENTRIES} >= {"gpu_oom", "host_oom", "hardware_fault", "container_error",
                                            "storage_full", "nan_loss", "resource_error", "comm_timeout",
                                            "timeout", "none"}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_each_real_log_gets_its_kind(entry: dict) -> None:
    diagnosis = diagnose(entry["state"] or None, entry["exit_code"], entry["log"])
    assert diagnosis.kind.value == entry["kind"], f"{entry['source']}: {diagnosis}"
    if entry["kind"] not in ("none", "unknown"):
        assert diagnosis.evidence.split(" (")[0] in entry["log"].replace("[rank0]: ", "")


def test_context_a_user_needs_is_in_the_evidence() -> None:
    by_id = {e["id"]: e for e in ENTRIES}

    def evidence(entry_id: str) -> str:
        entry = by_id[entry_id]
        return diagnose(entry["state"] or None, entry["exit_code"], entry["log"]).evidence

    assert "pt_output/chatglm_pt_checkpoint_deepspeed/checkpoint-10" in evidence("stream-writer-failed-checkpoint")
    assert "'out/intermediate.ntw'" in evidence("disk-quota-exceeded-path")
    assert "[step]   104" in evidence("logged-loss-nan-with-step")
    # The engine's own line names the step it stopped at.
    ours = diagnose("FAILED", 3, "step 11/40 loss 1.2034\nnon-finite loss nan at step 12; stopping")
    assert ours.kind is FailureKind.NAN_LOSS and "at step 12" in ours.evidence


def test_a_sigkilled_rank_is_host_oom_only_when_slurm_says_failed() -> None:
    log = by_id_log("torchrun-sigkill-rank-colossalai")
    assert diagnose("FAILED", 1, log).kind is FailureKind.HOST_OOM
    assert diagnose("CANCELLED by 0", 0, log).kind is FailureKind.UNKNOWN
    assert diagnose("TIMEOUT", 0, log).kind is FailureKind.TIMEOUT


def test_the_table_is_diagonal() -> None:
    print("\n" + confusion_table())
    assert all(expected == got for expected, got in confusion())


def by_id_log(entry_id: str) -> str:
    return next(e["log"] for e in ENTRIES if e["id"] == entry_id)


if __name__ == "__main__":
    print(f"{len(ENTRIES)} entries ({sum(e['kind'] != 'none' for e in ENTRIES)} failures), "
          f"{len({e['source'] for e in ENTRIES})} distinct sources")
    print(confusion_table())
