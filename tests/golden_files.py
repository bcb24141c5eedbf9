"""Compare rendered artifacts with files under tests/golden; PEFTPIPE_UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def assert_matches_golden(name: str, rendered: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PEFTPIPE_UPDATE_GOLDEN") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
        if os.environ.get("PEFTPIPE_UPDATE_GOLDEN") != "1":
            raise AssertionError(f"{path} did not exist and was written; review it and commit it")
        return
    expected = path.read_text()
    if rendered != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), rendered.splitlines(True), str(path), "rendered"))
        raise AssertionError(f"{name} differs from its golden file:\n{diff}\n"
                             "If the change is intended: PEFTPIPE_UPDATE_GOLDEN=1 ./scripts/test.sh tests/test_golden_hf.py")
