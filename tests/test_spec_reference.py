"""The spec reference (docs/spec.md), `peftpipe spec explain` and `peftpipe init`, as a new user meets them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.app import app
from peftpipe.spec import RunSpec
from peftpipe.spec_reference import REFERENCE_PATH, entries, reference_markdown
from peftpipe.validation import load_spec
from tests.conftest import EXAMPLE_DATA, EXAMPLE_SPEC, REPO

runner = CliRunner()


def test_docs_spec_md_is_generated_from_the_models() -> None:
    """The drift test: a field added, renamed or re-described without regenerating the reference fails here."""
    committed = (REPO / REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        f"{REFERENCE_PATH} is out of date. Fix: run `peftpipe spec reference --write {REFERENCE_PATH}` and commit it")
    assert "](docs/spec.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_every_key_has_a_description_and_an_example_the_models_accept() -> None:
    base = yaml.safe_load(EXAMPLE_SPEC.read_text())
    keys = entries()
    assert {"model.path", "train.learning_rate", "execution.slurm.mem", "peft.lora.target_modules"} <= {
        e.key for e in keys}
    for entry in keys:
        assert entry.description, f"{entry.key} has no description"
        if entry.section:
            continue
        raw = json.loads(json.dumps(base))
        *parents, leaf = entry.key.split(".")
        node = raw
        for name in parents:
            node = node.setdefault(name, {})
        # An optional section (dataset.fields) needs its required keys next to the one under test.
        siblings = [e for e in keys if e.key.rsplit(".", 1)[0] == ".".join(parents) and e.default == "required"]
        node.update({e.key.rsplit(".", 1)[1]: yaml.safe_load(e.example) for e in siblings if "." in e.key
                     and e.key.rsplit(".", 1)[1] not in node})
        node[leaf] = yaml.safe_load(entry.example)
        RunSpec.model_validate(raw)  # raises, naming the key, if the documented example is not a valid value


def test_spec_explain_prints_one_key_and_suggests_on_a_typo() -> None:
    shown = runner.invoke(app, ["spec", "explain", "model.path"])
    assert shown.exit_code == 0, shown.output
    assert "Local directory with config.json" in shown.output
    assert "default:     null" in shown.output and "  model:\n      path:" in shown.output

    shown = runner.invoke(app, ["spec", "explain", "train.lr_schedule"])
    assert 'allowed:     "constant", "linear", "cosine"' in shown.output and 'default:     "cosine"' in shown.output

    typo = runner.invoke(app, ["spec", "explain", "train.learning_rte"])
    assert typo.exit_code == 2
    assert "no such spec key" in typo.output and "train.learning_rate" in typo.output


def test_init_writes_a_commented_spec_that_validates(tmp_path: Path, hub_root: Path) -> None:
    model_dir = hub_root / "peftpipe" / "tiny-llama"
    shutil.copy(EXAMPLE_DATA, tmp_path / "squad.json")
    spec = tmp_path / "spec.yaml"
    written = runner.invoke(app, ["init", str(spec), "--model", str(model_dir), "--format", "squad",
                                  "--data", "squad.json"])
    assert written.exit_code == 0, written.output
    text = spec.read_text()
    assert "# Local directory with config.json and weights" in text  # descriptions become comments
    assert "# Peak learning rate of AdamW." in text
    loaded = load_spec(spec)
    assert loaded.spec.model.path == str(model_dir.resolve())
    assert loaded.spec.peft.lora.target_modules == "auto"  # the model's own projections, whatever its family
    again = runner.invoke(app, ["init", str(spec), "--model", str(model_dir), "--format", "squad"])
    assert again.exit_code == 2 and "--force" in again.output


def test_init_for_a_custom_format_and_a_hub_model(tmp_path: Path) -> None:
    """A GPT-NeoX model (OpenCALM, rinna) names its projections differently: the starter leaves them to auto."""
    model_dir = tmp_path / "open-calm"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    (tmp_path / "faq.jsonl").write_text(json.dumps({"question": "q?", "answer": "a"}) + "\n")
    spec = tmp_path / "spec.yaml"
    result = runner.invoke(app, ["init", str(spec), "--model", str(model_dir), "--format", "jsonl",
                                 "--data", "faq.jsonl"])
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load(spec.read_text())
    assert raw["name"] == "open-calm-jsonl-lora"
    assert raw["peft"]["lora"]["target_modules"] == "auto"
    assert raw["dataset"]["fields"] == {"input": "{question}", "output": "answer"}
    RunSpec.model_validate(raw)
    hub = runner.invoke(app, ["init", str(tmp_path / "hub.yaml"), "--model", "Qwen/Qwen2.5-0.5B", "--format",
                              "squad2"])
    assert hub.exit_code == 0
    assert yaml.safe_load((tmp_path / "hub.yaml").read_text())["model"] == {"repo_id": "Qwen/Qwen2.5-0.5B",
                                                                           "revision": "main"}


@pytest.mark.parametrize("bad", ["parquet"])
def test_init_refuses_an_unknown_format(tmp_path: Path, bad: str) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "s.yaml"), "--model", "x/y", "--format", bad])
    assert result.exit_code == 2 and "squad" in result.output and not (tmp_path / "s.yaml").exists()
