"""The core package imports without Prefect, and without torch until an engine runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, pkgutil, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    import peftpipe
    modules = [m.name for m in pkgutil.walk_packages(peftpipe.__path__, "peftpipe.") if m.name not in SKIP]
    for name in modules:
        __import__(name)
    print(len(modules), "modules imported")
    """
)


def run_blocked(blocked: set[str], skip: set[str]) -> subprocess.CompletedProcess:
    code = f"BLOCKED = {blocked!r}\nSKIP = {skip!r}\n" + BLOCKER
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)


def test_every_core_module_imports_without_prefect() -> None:
    # __main__ runs the CLI on import, so it is left out of the walk (cli itself is imported).
    result = run_blocked({"prefect"}, {"peftpipe.__main__"})
    assert result.returncode == 0, result.stderr
    assert "modules imported" in result.stdout


def test_cli_and_core_start_without_torch() -> None:
    """Heavy libraries stay inside the engine scripts, so the CLI and flows start fast."""
    engine_scripts = {"peftpipe.__main__", "peftpipe.engines.hf.train", "peftpipe.engines.hf.generate",
                      "peftpipe.engines.hf.modeling", "peftpipe.engines.hf.packing", "peftpipe.engines.hf.fast_kernels",
                      "peftpipe.engines.hf.fused_projections", "peftpipe.engines.hf.fused_qkv",
                      "peftpipe.engines.hf.checkpoints", "peftpipe.engines.hf.offload", "peftpipe.engines.hf.sharding",
                      "peftpipe.engines.hf.script_common"}
    result = run_blocked({"torch", "transformers", "peft"}, engine_scripts)
    assert result.returncode == 0, result.stderr
