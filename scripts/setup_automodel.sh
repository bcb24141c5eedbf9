#!/usr/bin/env bash
# Create .venv-automodel: NeMo AutoModel in an environment of its own, the way NeMo 1.x lives in its
# container. Idempotent: a second run only checks the stamp.
#
# Why its own venv: nemo-automodel 0.7.0 pins transformers==5.18.0 exactly, and its dependency
# flashoptim pulls triton 3.9, with which AutoModel's LoRA kernel module fails at import (an autotune
# key check added in triton 3.9); triton 3.8.0 works. The pipeline's own venv keeps its own pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
venv=${AUTOMODEL_VENV:-.venv-automodel}
pins=("nemo-automodel==0.7.0" "triton==3.8.0")
stamp="$venv/.peftpipe-automodel-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pins[*]}" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
# torch first: the CPU build of 2.13.0 on local disk; otherwise a dependency would pull CUDA wheels.
"$venv/bin/pip" install -q "torch==2.13.0"
"$venv/bin/pip" install -q "torch==2.13.0" "${pins[@]}"
"$venv/bin/python" -c "import nemo_automodel.components._peft.lora" 2>/dev/null
printf '%s' "${pins[*]}" > "$stamp"
