"""The artifacts section of a spec: file:// or s3:// stores, S3 settings, and no place for secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from peftpipe.validation import load_spec
from tests.conftest import write_spec

runner = CliRunner()

BAD_STORES = [
    pytest.param({"artifacts.store": "gs://models/runs"}, "artifacts.store: 'gs://models/runs' has an unsupported scheme",
                 "Fix: use file://DIRECTORY or s3://BUCKET/PREFIX", id="scheme"),
    pytest.param({"artifacts.store": "s3://My_Models/runs"}, "artifacts.store: 'My_Models' is not a valid S3 bucket name",
                 "Fix: use 3-63 lowercase letters, digits, dots and dashes", id="bucket-name"),
    pytest.param({"artifacts.s3": {"part_size_mb": 2}}, "artifacts.s3.part_size_mb: 2 is out of range",
                 "Fix: use a value >= 5", id="part-below-s3-minimum"),
    pytest.param({"artifacts.s3": {"addressing_style": "subdomain"}}, "artifacts.s3.addressing_style: 'subdomain' is not one of",
                 "Fix: use one of the listed values", id="addressing"),
    pytest.param({"artifacts.s3": {"secret_access_key": "abc"}}, "artifacts.s3.secret_access_key: unknown key; valid keys"
                 " here are endpoint_url, region, addressing_style, part_size_mb, max_concurrency, max_attempts,"
                 " credentials_block", "Fix: remove it", id="no-secrets-in-specs"),
]


@pytest.mark.parametrize(("changes", "problem", "fix"), BAD_STORES)
def test_bad_artifact_settings_exit_2_naming_field_and_fix(tmp_path: Path, changes, problem, fix) -> None:
    result = runner.invoke(app, ["validate", str(write_spec(tmp_path, changes))])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert problem in output and fix in output


def test_an_s3_store_with_its_settings_is_valid(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {"artifacts.store": "s3://peftpipe-runs/team-a",
                                 "artifacts.s3": {"endpoint_url": "http://127.0.0.1:8333", "addressing_style": "path",
                                                  "part_size_mb": 64, "max_concurrency": 16,
                                                  "credentials_block": "aws-credentials/seaweed"}})
    artifacts = load_spec(spec).spec.artifacts
    assert artifacts.s3.part_size_mb == 64 and artifacts.s3.credentials_block == "aws-credentials/seaweed"
    assert load_spec(write_spec(tmp_path / "plain")).spec.model.token_secret == "hf-token"
