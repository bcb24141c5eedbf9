#!/usr/bin/env bash
# Stop the one-node cluster that start_slurm.sh started (daemons only; state stays on disk).
set -uo pipefail
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
    pkill -x "$daemon" || true
    for _ in $(seq 1 60); do
        pgrep -x "$daemon" >/dev/null || break
        sleep 0.5
    done
done
echo "slurm: stopped"
