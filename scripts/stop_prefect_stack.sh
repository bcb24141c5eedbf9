#!/usr/bin/env bash
# Stop what scripts/start_prefect_stack.sh started (worker, Hub mirror, server, and PostgreSQL if it
# started it). Slurm and S3 have their own stop commands. The database and logs stay in STACK_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${STACK_DIR:-.cache/prefect-stack}
[ -d "$stack" ] || exit 0
for name in worker hub server; do
  pidfile=$stack/$name.pid
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  # Each was started with setsid: its process group holds its children (the server's services).
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "stopped $name ($pid)"
done
if [ -f "$stack/postgres.started" ]; then
  pg_ctlcluster "$(ls /etc/postgresql | sort -n | tail -1)" main stop && rm -f "$stack/postgres.started"
  echo "stopped postgresql"
fi
