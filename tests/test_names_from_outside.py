"""Run ids and Hub names that come from people and the API (issue 18).

One run-id rule (the spec name's slug rule plus a suffix) at every entry point: `peftpipe run`
and `render --run-id`, the flows' run_id parameters (what a deployment run passes), the run
directory, and the store (tests/test_store_hostile.py). Repo ids and revisions follow the Hub's rules.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftpipe import stages
from peftpipe.validation import SpecError, load_spec
from tests.conftest import TINY_REPO_ID, write_spec

HOSTILE_RUN_IDS = ["../../ESCAPED", "_promoted", "/tmp/abs", "a/b", "UPPER", "dots..", "-leading-dash", "x" * 161,
                   "newline-at-end\n"]


def peftpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftpipe", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "300", "HF_ENDPOINT": "http://127.0.0.1:1"}, timeout=120)


def test_generated_run_ids_follow_the_rule() -> None:
    from peftpipe.safe_names import is_run_id

    run_id = stages.new_run_id("a" * 63)
    eval_id = stages.new_run_id(f"{run_id}-eval")
    assert is_run_id(run_id) and is_run_id(eval_id) and is_run_id(f"{eval_id}-incumbent")
    assert not any(is_run_id(hostile) for hostile in HOSTILE_RUN_IDS)


@pytest.mark.parametrize(("command", "run_id"), [("run", "../../ESCAPED"), ("run", "_promoted"),
                                                 ("render", "../../ESCAPED")])
def test_cli_refuses_a_run_id_outside_the_rule_before_anything_starts(tmp_path: Path, command: str,
                                                                      run_id: str) -> None:
    work = tmp_path / "a" / "b"
    spec = write_spec(work, {"workdir": str(work / "runs"), "artifacts.store": f"file://{work / 'store'}"})
    extra = ["--stage", "finetune"] if command == "render" else []
    result = peftpipe(command, str(spec), "--run-id", run_id, *extra, cwd=work)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"--run-id {run_id!r} is not a valid run id" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ESCAPED").exists() and not (work / "runs").exists() and not (work / "store").exists()


@pytest.mark.parametrize("run_id", HOSTILE_RUN_IDS)
def test_the_flow_run_id_parameters_and_run_directories_refuse_it(tmp_path: Path, run_id: str) -> None:
    from flows.evaluate import evaluate_adapter
    from flows.finetune import finetune

    work = tmp_path / "a" / "b"
    spec = write_spec(work, {"workdir": str(work / "runs"), "artifacts.store": f"file://{work / 'store'}"})
    with pytest.raises(ValueError, match=r"run_id parameter .* is not a valid run id"):
        finetune.fn(spec_path=str(spec), run_id=run_id)  # what a deployment run with --param run_id=... calls
    with pytest.raises(ValueError, match=r"run_id parameter .* is not a valid run id"):
        evaluate_adapter.fn(spec_path=str(spec), run_id=run_id)
    with pytest.raises(ValueError, match=r"eval_id parameter .* is not a valid run id"):
        evaluate_adapter.fn(spec_path=str(spec), run_id="fine-run", eval_id=run_id)
    with pytest.raises(ValueError, match="is not a valid run id"):
        stages.run_paths(load_spec(spec), run_id)
    assert not (tmp_path / "ESCAPED").exists() and not (work / "runs").exists()


@pytest.mark.parametrize(("changes", "field"), [
    ({"model.repo_id": "../../etc"}, "model.repo_id"),
    ({"model.repo_id": "org/../../etc"}, "model.repo_id"),
    ({"model.repo_id": "a/b/c"}, "model.repo_id"),
    ({"model.repo_id": "name.git"}, "model.repo_id"),
    ({"model.revision": "../../../x"}, "model.revision"),
    ({"model.revision": "/etc/passwd"}, "model.revision"),
    ({"model.revision": "main\nx"}, "model.revision"),
    ({"model.revision": "a b"}, "model.revision"),
])
def test_repo_ids_and_revisions_outside_the_hub_rules_fail_validation(tmp_path: Path, changes: dict,
                                                                      field: str) -> None:
    with pytest.raises(SpecError) as refused:
        load_spec(write_spec(tmp_path, changes))
    assert f"{field}: " in str(refused.value) and "Fix:" in str(refused.value)


def test_names_the_loopback_hub_serves_pass_validation_and_fetch(tmp_path: Path, hub_endpoint: str) -> None:
    """The rules keep real names: a namespaced repo id, a branch and a commit sha, fetched by huggingface_hub."""
    cache = tmp_path / "cache"
    changes = {"model.repo_id": TINY_REPO_ID, "model.endpoint": hub_endpoint, "model.cache_dir": str(cache)}
    loaded = load_spec(write_spec(tmp_path / "main", {**changes, "model.revision": "main"}))
    fetched = stages.fetch_stage(loaded, stages.run_paths(loaded, "names-main"))
    by_sha = load_spec(write_spec(tmp_path / "sha", {**changes, "model.revision": fetched.commit_sha}))
    again = stages.fetch_stage(by_sha, stages.run_paths(by_sha, "names-sha"))
    assert again.commit_sha == fetched.commit_sha and (again.path / "config.json").is_file()
