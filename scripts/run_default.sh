#!/usr/bin/env bash
# The embedded default, end to end: build the tiny model, serve it from a loopback Hub mirror,
# and run examples/tiny/spec.yaml through the Prefect flow on the local ephemeral API.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
hub=.cache/hub
corpus=examples/tiny/squad_tiny_two_wordings.json
# Built once; again when the corpus (its tokenizer's text) changed.
if [ ! -f "$hub/peftpipe/tiny-llama/model.safetensors" ] || [ "$corpus" -nt "$hub/peftpipe/tiny-llama/model.safetensors" ]; then
  .venv/bin/peftpipe tiny-model "$hub/peftpipe/tiny-llama" --corpus "$corpus"
fi
rm -f .cache/hub.port
.venv/bin/peftpipe hub serve "$hub" --port-file .cache/hub.port >/dev/null &
mirror=$!
trap 'kill $mirror 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s .cache/hub.port ] && break; sleep 0.1; done
export HF_ENDPOINT="http://127.0.0.1:$(cat .cache/hub.port)"
export HF_HOME="$PWD/.cache/hf-home"
.venv/bin/peftpipe run examples/tiny/spec.yaml "$@"
