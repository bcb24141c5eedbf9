#!/usr/bin/env bash
# Set up and run the whole test suite (unit, integration and end-to-end through Prefect).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# NeMo AutoModel in its own venv (.venv-automodel) for the automodel engine's tests; a no-op when installed.
./scripts/setup_automodel.sh
# The real one-node Slurm cluster (slurm-wlm, munge, slurmdbd, MariaDB); a no-op when it is up.
./scripts/start_slurm.sh
# Debian's chromium for the UI test (tests/test_ui_browser.py); a no-op when installed.
./scripts/setup_browser.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# The slowest tests, so a CI log shows where the suite's time goes.
exec .venv/bin/python -m pytest -q --durations=25 "$@"
