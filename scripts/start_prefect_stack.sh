#!/usr/bin/env bash
# Start the Prefect stack on 127.0.0.1 and make the deployments runnable: `prefect server start`
# (SQLite, or PostgreSQL with --postgres), the process work pool, the blocks
# (`prefect block register -m blocks`), the global GPU-job limit, `prefect --no-prompt deploy --all`
# (deployments/prefect.yaml) and a process worker. Idempotent: what is up stays up; the blocks and
# deployments are registered again (a no-op when unchanged).
#
#   scripts/start_prefect_stack.sh [--postgres] [--slurm] [--s3] [--hub] [--all] [--server-only]
#     --postgres   Debian's postgresql (installed if missing) instead of SQLite
#     --slurm      also scripts/start_slurm.sh          --s3   also scripts/start_s3.sh
#     --hub        serve the tiny model from a loopback Hub mirror (what examples/tiny/spec.yaml needs)
#     --all        --slurm --s3 --hub
#     --server-only  the server alone (no pool, blocks, deployments or worker)
#   STACK_DIR=.cache/prefect-stack   state: logs, pid files, PREFECT_HOME, env (source it to use the CLI)
#   PREFECT_PORT=4200 | auto         auto: a free port
#
# Then:  set -a; . .cache/prefect-stack/env; set +a
#        prefect deployment run 'finetune/tiny' --param micro_batch_size=4 --watch
# Stop:  scripts/stop_prefect_stack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
postgres=0 slurm=0 s3=0 hub=0 server_only=0
for arg in "$@"; do
  case $arg in
    --postgres) postgres=1 ;; --slurm) slurm=1 ;; --s3) s3=1 ;; --hub) hub=1 ;;
    --all) slurm=1 s3=1 hub=1 ;; --server-only) server_only=1 ;;
    *) echo "start_prefect_stack.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
./scripts/setup.sh
stack=${STACK_DIR:-.cache/prefect-stack}
mkdir -p "$stack"
stack=$(cd "$stack" && pwd)
bin=$repo/.venv/bin
pool=${PREFECT_POOL:-peftpipe-process}
export PREFECT_HOME=$stack/home PREFECT_SERVER_ANALYTICS_ENABLED=false
# The server's own settings stay out of the CLI calls below and the worker: they only need the API.
unset PREFECT_API_DATABASE_CONNECTION_URL PREFECT_SERVER_DATABASE_CONNECTION_URL
started=$(date +%s)

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
elapsed() { echo "$(( $(date +%s) - started )) s"; }

[ $slurm = 1 ] && ./scripts/start_slurm.sh
[ $s3 = 1 ] && ./scripts/start_s3.sh

# --- the database --------------------------------------------------------------------------------
db_url=""
if [ $postgres = 1 ]; then
  if ! command -v pg_ctlcluster >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -n | tail -1)
  pg_ctlcluster "$version" main status >/dev/null 2>&1 || { pg_ctlcluster "$version" main start; touch "$stack/postgres.started"; }
  [ -f "$stack/pg.password" ] || (umask 077; "$bin/python" -c 'import secrets; print(secrets.token_hex(16))' > "$stack/pg.password")
  password=$(cat "$stack/pg.password")
  database=${PREFECT_PG_DATABASE:-prefect}
  runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prefect') THEN CREATE ROLE prefect LOGIN; END IF;
END \$\$;
ALTER ROLE prefect PASSWORD '$password';
SQL
  runuser -u postgres -- psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1 \
    || runuser -u postgres -- createdb -O prefect "$database"
  db_url="postgresql+asyncpg://prefect:$password@127.0.0.1:5432/$database"
fi

# --- the server ----------------------------------------------------------------------------------
if running "$stack/server.pid"; then
  api=$(cat "$stack/api_url")
else
  port=${PREFECT_PORT:-4200}
  if [ "$port" = auto ]; then
    port=$("$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  api=http://127.0.0.1:$port/api
  # The connection URL (with its password) reaches the server through the environment only.
  # The UI asks the browser to call the API at PREFECT_UI_API_URL, which defaults to port 4200.
  # Concurrency-slot leases on disk (PREFECT_HOME), not in the server's memory: a GPU job's slot held
  # across a server restart is still known afterwards, so its release (or expiry) frees it.
  (export PREFECT_UI_API_URL=$api
   export PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem
   if [ -n "$db_url" ]; then export PREFECT_API_DATABASE_CONNECTION_URL=$db_url; fi
   exec setsid "$bin/prefect" server start --host 127.0.0.1 --port "$port" </dev/null >>"$stack/server.log" 2>&1) &
  echo $! >"$stack/server.pid"
  echo "$api" >"$stack/api_url"
  # The name of the database kind only: the URL carries the password.
  if [ -n "$db_url" ]; then echo postgresql; else echo sqlite; fi >"$stack/database"
fi
export PREFECT_API_URL=$api
export PREFECT_UI_URL=${api%/api}
printf 'PREFECT_API_URL=%s\nPREFECT_UI_URL=%s\nPREFECT_HOME=%s\n' "$api" "$PREFECT_UI_URL" "$PREFECT_HOME" >"$stack/env"
for _ in $(seq 1 240); do
  "$bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$api/health', timeout=2)" 2>/dev/null && break
  running "$stack/server.pid" || { echo "the Prefect server exited; see $stack/server.log" >&2; tail -20 "$stack/server.log" >&2; exit 1; }
  sleep 0.5
done
echo "prefect server: $api ($(cat "$stack/database"), up after $(elapsed))"
[ $server_only = 1 ] && exit 0

# --- pool, blocks, limit, deployments ------------------------------------------------------------
# The pool's own default is stream_output false too, so a deployment made without prefect.yaml
# (`prefect deploy flows/x.py:fn --pool ...`) also survives a worker restart.
if ! "$bin/prefect" work-pool inspect "$pool" >/dev/null 2>&1; then
  "$bin/prefect" work-pool get-default-base-job-template --type process --file "$stack/pool-template.json" >/dev/null
  "$bin/python" - "$stack/pool-template.json" <<'PY'
import json, sys
template = json.load(open(sys.argv[1]))
template["variables"]["properties"]["stream_output"]["default"] = False
json.dump(template, open(sys.argv[1], "w"), indent=2)
PY
  "$bin/prefect" work-pool create "$pool" --type process --base-job-template "$stack/pool-template.json" >/dev/null
fi
"$bin/prefect" block register -m blocks >/dev/null
"$bin/prefect" block register -m prefect_aws >/dev/null
"$bin/prefect" gcl inspect peftpipe-gpu-jobs >/dev/null 2>&1 || "$bin/prefect" gcl create peftpipe-gpu-jobs --limit 4 >/dev/null
"$bin/prefect" --no-prompt deploy --all --prefect-file deployments/prefect.yaml >"$stack/deploy.log" 2>&1 \
  || { cat "$stack/deploy.log" >&2; exit 1; }
echo "deployments: $("$bin/prefect" deployment ls 2>/dev/null | grep -oE '[a-z-]+/[a-z-]+' | sort -u | paste -sd ' ') (after $(elapsed))"

# --- the Hub mirror of the tiny model --------------------------------------------------------------
if [ $hub = 1 ]; then
  mirror=.cache/hub
  [ -f "$mirror/peftpipe/tiny-llama/model.safetensors" ] \
    || "$bin/peftpipe" tiny-model "$mirror/peftpipe/tiny-llama" --corpus examples/tiny/squad_tiny.json >/dev/null
  if ! running "$stack/hub.pid"; then
    rm -f "$stack/hub.port"
    setsid "$bin/peftpipe" hub serve "$mirror" --port-file "$stack/hub.port" </dev/null >>"$stack/hub.log" 2>&1 &
    echo $! >"$stack/hub.pid"
    for _ in $(seq 100); do [ -s "$stack/hub.port" ] && break; sleep 0.1; done
  fi
  export HF_ENDPOINT="http://127.0.0.1:$(cat "$stack/hub.port")"
  echo "hub mirror: $HF_ENDPOINT"
fi

# --- the worker --------------------------------------------------------------------------------------
if ! running "$stack/worker.pid"; then
  # S3 keys reach the flows through the worker's environment (never a parameter or a job script).
  if [ $s3 = 1 ] && [ -f .cache/seaweedfs/s3.env ]; then set -a; . .cache/seaweedfs/s3.env; set +a; fi
  setsid "$bin/prefect" worker start --pool "$pool" --name "peftpipe-$(hostname -s)" \
    </dev/null >>"$stack/worker.log" 2>&1 &
  echo $! >"$stack/worker.pid"
fi
for _ in $(seq 1 120); do
  grep -q "started" "$stack/worker.log" 2>/dev/null && break
  running "$stack/worker.pid" || { echo "the worker exited; see $stack/worker.log" >&2; tail -20 "$stack/worker.log" >&2; exit 1; }
  sleep 0.5
done
echo "worker: pool $pool (log $stack/worker.log), ready after $(elapsed)"
echo "UI: ${api%/api}   CLI: set -a; . $stack/env; set +a"
