"""Conventions of every block in blocks/, and their registration with `prefect block register -m blocks`."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

import blocks

BLOCKS = [member for _, member in inspect.getmembers(blocks, inspect.isclass) if issubclass(member, Block)]
SECRET_NAME = re.compile(r"token|secret|password|key", re.IGNORECASE)


def test_every_block_class_is_exported() -> None:
    assert {cls.__name__ for cls in BLOCKS} == {"ArtifactStore", "HuggingFaceToken", "SlurmCluster"}


@pytest.mark.parametrize("block", BLOCKS, ids=lambda cls: cls.__name__)
class TestBlockStandards(BlockStandardTestSuite):
    """Prefect's own block conventions: description, field descriptions ending in '.', a load example."""

    @pytest.fixture
    def block(self, block: type[Block]) -> type[Block]:
        return block

    def test_has_a_documentation_url(self, block: type[Block]) -> None:
        pytest.skip("the project documents its blocks in deployments/README.md, not on a public site")

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        pytest.skip("no logos; Prefect's check downloads the image")


@pytest.mark.parametrize("block", BLOCKS, ids=lambda cls: cls.__name__)
def test_secret_looking_fields_are_secret_str(block: type[Block]) -> None:
    for name, field in block.model_fields.items():
        if SECRET_NAME.search(name) and not name.endswith("_block"):
            assert field.annotation in (SecretStr, SecretStr | None), f"{block.__name__}.{name} must be a SecretStr"


def test_slurm_cluster_block_gives_spec_defaults() -> None:
    from blocks.slurm_cluster import SlurmCluster
    from peftpipe.spec import SlurmSpec

    cluster = SlurmCluster(partition="gpu", account="nlp", container_runtime="pyxis",
                           container_image="nvcr.io#nvidia/nemo:24.03", mounts=["/data"], mem="64G")
    spec = SlurmSpec.model_validate(cluster.slurm_defaults())
    assert (spec.partition, spec.account, spec.mem, spec.container.runtime, spec.container.mounts) == (
        "gpu", "nlp", "64G", "pyxis", ["/data"])


def test_register_and_save_through_the_prefect_cli(prefect_api) -> None:
    """`prefect block register -m blocks` registers every type; a saved token is masked when read back."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    prefect = [sys.executable, "-m", "prefect"]
    registered = subprocess.run([*prefect, "block", "register", "-m", "blocks"], env=env, capture_output=True,
                                text=True, timeout=300)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    listed = subprocess.run([*prefect, "block", "type", "ls"], env={**env, "COLUMNS": "250"}, capture_output=True,
                            text=True, timeout=300).stdout
    for slug in ("slurm-cluster", "peftpipe-artifact-store", "hugging-face-token"):
        assert slug in listed, listed

    from blocks.hf_token import HuggingFaceToken
    from blocks.credentials import hub_token

    HuggingFaceToken(token="hf_test_not_a_real_token").save("peftpipe-test-token", overwrite=True)
    shown = subprocess.run([*prefect, "block", "inspect", "hugging-face-token/peftpipe-test-token"],
                           env={**env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=300).stdout
    assert "hf_test_not_a_real_token" not in shown and "****" in shown
    assert hub_token("peftpipe-test-token")[0] == "hf_test_not_a_real_token"  # the fetch task's lookup
