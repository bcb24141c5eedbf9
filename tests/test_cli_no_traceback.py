"""Every `peftpipe` sub-command, given broken inputs, ends with a short error and exit code 1 or 2, never a traceback.

The cases run the installed command line (`python -m peftpipe`) as a user would. A sub-command
added without a case here fails `test_every_sub_command_has_broken_input_cases`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import write_spec

DEEP = "[" * 100_000 + "]" * 100_000
MAX_ERROR_LINES = 4  # `validate` prints a header and one line per problem; the others print one line


def sub_commands() -> set[str]:
    import typer.main

    from cli.app import app

    def leaves(command, prefix: tuple[str, ...]) -> list[str]:  # noqa: ANN001 - a click command
        if hasattr(command, "commands"):
            return [leaf for name, sub in command.commands.items() for leaf in leaves(sub, (*prefix, name))]
        return [" ".join(prefix)]

    return set(leaves(typer.main.get_command(app), ()))


def store_with_broken_runs(root: Path) -> None:
    """Runs whose manifests a lab-mate broke: malformed, traversing, pointing at a missing object."""
    payload = b"x\n"
    digest = hashlib.sha256(payload).hexdigest()
    manifests = {
        "malformed": '{"objects": [{"key": "adapter/a", "size": "2"}]}',
        "not-json": "{",
        "traversal": json.dumps({"objects": [{"key": "adapter/../../../escaped", "size": 2, "sha256": digest}]}),
        "gone": json.dumps({"objects": [{"key": "adapter/a", "size": 2, "sha256": digest}]}),
        "fine": json.dumps({"objects": [{"key": "adapter/a", "size": 2, "sha256": digest}]}),
    }
    for run_id, manifest in manifests.items():
        (root / run_id).mkdir(parents=True)
        (root / run_id / "manifest.json").write_text(manifest)
    # Published runs export must refuse: a NeMo 1.x .nemo adapter, a p-tuning run asked to merge; and one unpublished.
    spec_of = {"nemo-run": {"engine": "nemo", "peft": {"method": "lora"}},
               "ptuning-run": {"engine": "hf", "peft": {"method": "ptuning"}}}
    for run_id, spec in spec_of.items():
        (root / run_id).mkdir(parents=True)
        (root / run_id / "manifest.json").write_text(json.dumps({"objects": [], "spec": spec}))
    (root / "unpublished" / "adapter").mkdir(parents=True)
    (root / "fine" / "adapter").mkdir()
    (root / "fine" / "adapter" / "a").write_bytes(payload)
    (root / "_promoted").mkdir()
    (root / "_promoted" / "tiny.json").write_text('{"run_id": "../../etc"}')
    (root / "_promoted" / "broken.json").write_text("{")


def broken_cases(work: Path) -> list[tuple[str, list[str]]]:
    """(sub-command, arguments) pairs, each a way a person or a file can be wrong."""
    spec = write_spec(work / "spec")
    invalid = write_spec(work / "invalid", {"train.global_batch_size": 30, "execution.slurm.env": {"A B": "1"},
                                            "model.repo_id": "../../etc"})
    (work / "bad.yaml").write_text("model: [unclosed\n")
    (work / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (work / "deep.yaml").write_text("a: " + DEEP + "\n")
    (work / "list.yaml").write_text("- a\n- b\n")
    (work / "a-file").write_text("not a directory\n")
    (work / "bad.json").write_text('[{"q": "a", "a": "b"}, {"q": ')
    (work / "latin1.json").write_bytes('[{"q": "caf\xe9", "a": "b"}]'.encode("latin-1"))
    (work / "deep.jsonl").write_text('{"input": ' + DEEP + ', "output": "x"}\n')
    (work / "ok.jsonl").write_text('{"input": "a", "output": "b"}\n')
    (work / "not-nemo.jsonl").write_text('{"question": "a"}\n')
    (work / "empty-dir").mkdir()
    store_with_broken_runs(work / "store")
    store = ["--store", f"file://{work / 'store'}"]
    missing = str(work / "missing.yaml")
    return [
        ("validate", [missing]),
        ("validate", [str(work)]),
        ("validate", [str(work / "bad.yaml")]),
        ("validate", [str(work / "latin1.yaml")]),
        ("validate", [str(work / "deep.yaml")]),
        ("validate", [str(work / "list.yaml")]),
        ("validate", [str(invalid)]),
        ("validate", [str(spec), "--set", "no-equals-sign"]),
        ("validate", [str(spec), "--set", "name.inner=1"]),
        ("run", [missing]),
        ("run", [str(invalid)]),
        ("run", [str(spec), "--run-id", "../../ESCAPED"]),
        ("run", [str(spec), "--run-id", "_promoted"]),
        ("render", [str(spec), "--stage", "train"]),
        ("render", [str(spec), "--stage", "convert"]),
        ("render", [str(spec), "--stage", "finetune", "--run-id", "../x"]),
        ("render", [str(spec), "--stage", "finetune", "--attempt", "0"]),
        ("render", [str(work / "bad.yaml"), "--stage", "finetune"]),
        ("diagnose", [str(work / "missing.log")]),
        ("diagnose", [str(work / "empty-dir")]),
        ("diagnose", [str(work / "a-file"), "--exit-code", "many"]),
        ("tiny-model", [str(work / "tiny"), "--corpus", str(work / "missing.json")]),
        ("tiny-model", [str(work / "tiny"), "--corpus", str(work / "bad.json")]),
        ("tiny-model", [str(work / "tiny"), "--corpus", str(work / "latin1.json")]),
        ("hub serve", [str(work / "missing-root")]),
        ("hub serve", [str(work / "empty-dir"), "--host", "no-such-host.invalid"]),
        ("hub serve", [str(work / "empty-dir"), "--port-file", str(work / "a-file" / "port")]),
        ("data convert", [str(work / "missing.json"), str(work / "out"), "--format", "squad"]),
        ("data convert", [str(work / "bad.json"), str(work / "out"), "--format", "json", "--field", "input=q",
                          "--field", "output=a"]),
        ("data convert", [str(work / "latin1.json"), str(work / "out"), "--format", "json", "--field", "input=q",
                          "--field", "output=a"]),
        ("data convert", [str(work / "deep.jsonl"), str(work / "out"), "--format", "jsonl"]),
        ("data convert", [str(work / "ok.jsonl"), str(work / "a-file" / "out"), "--format", "jsonl",
                          "--validation-ratio", "0", "--test-ratio", "0"]),
        ("data convert", [str(work / "ok.jsonl"), str(work / "out"), "--format", "yaml"]),
        ("data convert", [str(work / "ok.jsonl"), str(work / "out"), "--format", "jsonl", "--field", "nonsense"]),
        ("data stats", [str(work / "missing.jsonl"), "--model", str(work / "empty-dir")]),
        ("data stats", [str(work / "ok.jsonl"), "--model", str(work / "empty-dir")]),
        ("data stats", [str(work / "not-nemo.jsonl"), "--model", str(work / "a-file")]),
        ("artifacts ls", []),
        ("artifacts ls", ["--store", "ftp://host/x"]),
        ("artifacts ls", ["--spec", missing]),
        ("artifacts ls", ["--spec", str(work / "bad.yaml")]),
        ("artifacts ls", ["../../etc", *store]),
        ("artifacts ls", ["malformed", *store]),
        ("artifacts ls", ["not-json", *store]),
        ("artifacts ls", ["absent", *store]),
        ("artifacts get", ["traversal", "adapter", str(work / "dest"), *store]),
        ("artifacts get", ["gone", "adapter", str(work / "dest"), *store]),
        ("artifacts get", ["fine", "adapter/../../x", str(work / "dest"), *store]),
        ("artifacts get", ["fine", "adapter", str(work / "a-file" / "dest"), *store]),
        ("artifacts get", ["absent", "adapter", str(work / "dest"), *store]),
        ("artifacts promoted", ["tiny", *store]),
        ("artifacts promoted", ["broken", *store]),
        ("artifacts promoted", ["../tiny", *store]),
        ("artifacts promoted", ["nobody", *store]),
        ("spec explain", ["train.no_such_key"]),
        ("spec explain", ["../../etc"]),
        ("spec reference", ["--write", str(work / "a-file" / "spec.md")]),
        ("init", [str(work / "a-file" / "spec.yaml"), "--model", "x/y", "--format", "squad"]),
        ("init", [str(work / "new.yaml"), "--model", "x/y", "--format", "yaml"]),
        ("init", [str(spec), "--model", "x/y", "--format", "squad"]),
        ("runs", ["--spec", missing]),
        ("runs", ["compare", "fine", "absent", *store]),
        ("runs", ["compare", "fine", *store]),
        ("runs", ["--store", "ftp://host/x"]),
        ("generate", ["../../etc", "--spec", str(spec), "--prompt", "q"]),
        ("generate", ["absent", "--spec", missing, "--prompt", "q"]),
        ("export", ["../../etc", *store]),
        ("export", ["absent", *store]),
        ("export", ["unpublished", *store]),
        ("export", ["fine", *store]),
        ("export", ["nemo-run", *store]),
        ("export", ["ptuning-run", "--merge", *store]),
        ("export", ["fine", "--spec", missing]),
    ]


def run_case(work: Path, command: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "HF_ENDPOINT": "http://127.0.0.1:1"}
    env.pop("PEFTPIPE_ARTIFACT_STORE", None)
    argv = [sys.executable, "-m", "peftpipe", *command.split(), *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=work, env=env, timeout=60)
    except subprocess.TimeoutExpired as error:  # e.g. a server that started on bad input and kept serving
        output = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else error.stdout or ""
        return subprocess.CompletedProcess(argv, -1, output, f"still running after {error.timeout} s")


def test_every_sub_command_has_broken_input_cases(tmp_path: Path) -> None:
    covered = {command for command, _ in broken_cases(tmp_path)}
    assert sub_commands() == covered


def test_broken_inputs_end_with_a_short_error_and_exit_1_or_2_never_a_traceback(tmp_path: Path) -> None:
    cases = broken_cases(tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: run_case(tmp_path, *case), cases))
    problems = []
    for (command, args), result in zip(cases, results):
        output = result.stdout + result.stderr
        # Click's usage errors come framed, after a usage line: count only the message.
        lines = [line for line in result.stderr.splitlines()
                 if line.strip() and not line.startswith(("╭", "╰", "Usage:", "Try '"))]
        if "Traceback" in output or result.returncode not in (1, 2) or not lines or len(lines) > MAX_ERROR_LINES:
            problems.append(f"peftpipe {command} {' '.join(args)} -> exit {result.returncode}:\n{output[-1500:]}")
    assert not problems, "\n\n".join(problems)
    assert not (tmp_path.parent / "escaped").exists()
    assert not [path for path in (tmp_path / "dest").rglob("*") if path.is_file()], "a refused get wrote files"
