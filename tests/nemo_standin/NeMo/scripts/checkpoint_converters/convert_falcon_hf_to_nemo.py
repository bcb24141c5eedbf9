"""STAND-IN (test fixture) for NeMo's convert_falcon_hf_to_nemo.py: runs tests/nemo_standin/standin.py, not NeMo."""

import sys
from pathlib import Path

# The peftpipe checkout that holds this fixture, so that `tests.nemo_standin` imports.
sys.path.insert(0, str(next(p for p in Path(__file__).resolve().parents if (p / "tests" / "nemo_standin").is_dir())))

from tests.nemo_standin.standin import main  # noqa: E402

sys.exit(main(__file__, sys.argv[1:]))
