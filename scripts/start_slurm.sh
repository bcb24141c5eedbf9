#!/usr/bin/env bash
# Install and start a one-node Slurm cluster on this machine (as root), with accounting
# (slurmdbd + MariaDB) so that `sacct` still knows a job after it leaves the queue.
#
# Idempotent: when the controller answers and the node is up, it does nothing.
# The node declares 4 GPUs as generic resources (no device files) so that
# `--gres=gpu:N` / `--gpus-per-node=N` requests schedule on a machine without GPUs, and
# more CPUs and memory than the machine has (config_overrides) so that a run's stages and
# a test's jobs can be queued side by side on a 2-core CI runner.
set -euo pipefail

CLUSTER=peftpipe
NODE=$(hostname -s)
NODE_CPUS=${PEFTPIPE_SLURM_CPUS:-8}
NODE_MEM_MB=${PEFTPIPE_SLURM_MEM_MB:-16000}
PARTITION_MAX_MEM_MB=${PEFTPIPE_SLURM_MAX_MEM_MB:-12000}
LOG_DIR=/var/log/slurm

cluster_is_up() {
    command -v sinfo >/dev/null 2>&1 || return 1
    pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null && pgrep -x slurmdbd >/dev/null || return 1
    timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" || return 1
    timeout 5 sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER" || return 1
    local state
    state=$(timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1)
    [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]
}

render_slurm_conf() {
    cat <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=2
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
ReturnToService=2
SchedulerParameters=sched_interval=2
KillWait=10
InactiveLimit=0
MinJobAge=300
NodeName=$NODE CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE DefMemPerNode=2048 MaxMemPerNode=$PARTITION_MAX_MEM_MB State=UP
EOF
}

if cluster_is_up; then
    if ! render_slurm_conf | cmp -s - /etc/slurm/slurm.conf; then
        render_slurm_conf >/etc/slurm/slurm.conf
        timeout 10 scontrol reconfigure
        echo "slurm: configuration changed; reconfigured"
    fi
    echo "slurm: already up ($(sinfo -h -o '%P %D %T' | head -1))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm: this script installs packages and starts daemons; run it as root" >&2
    exit 1
fi

started=$(date +%s)

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmdbd >/dev/null 2>&1 \
    || ! command -v mariadbd >/dev/null 2>&1; then
    echo "slurm: installing slurm-wlm, slurmdbd, munge, mariadb-server"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi

mkdir -p /etc/slurm "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge /run/mysqld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

# --- munge -----------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi

# --- MariaDB for slurmdbd ---------------------------------------------------------------
if ! pgrep -x mariadbd >/dev/null; then
    setsid runuser -u mysql -- /usr/sbin/mariadbd --bind-address=127.0.0.1 \
        </dev/null >"$LOG_DIR/mariadb.log" 2>&1 &
fi
for _ in $(seq 1 60); do
    mariadb -u root -e "select 1" >/dev/null 2>&1 && break
    sleep 0.5
done
mariadb -u root <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-local-only';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# --- configuration ------------------------------------------------------------------------
cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-local-only
StorageLoc=slurm_acct_db
EOF
chmod 600 /etc/slurm/slurmdbd.conf

render_slurm_conf >/etc/slurm/slurm.conf

# Slurm counts GPUs by their device files; character devices that behave like /dev/null
# stand in for them (TaskPlugin=task/none never confines a job to its devices).
for index in 0 1 2 3; do
    [ -e "/dev/peftpipe-gpu$index" ] || mknod -m 666 "/dev/peftpipe-gpu$index" c 1 3
done
cat >/etc/slurm/gres.conf <<EOF
NodeName=$NODE Name=gpu File=/dev/peftpipe-gpu[0-3]
EOF

# --- daemons -----------------------------------------------------------------------------
if ! pgrep -x slurmdbd >/dev/null; then
    slurmdbd
fi
for _ in $(seq 1 60); do
    timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 && break
    sleep 0.5
done
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

if ! pgrep -x slurmctld >/dev/null; then
    slurmctld
fi
if ! pgrep -x slurmd >/dev/null; then
    slurmd
fi

deadline=$(( $(date +%s) + 90 ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    if cluster_is_up; then
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        echo "slurm: up in $(( $(date +%s) - started )) s ($(sinfo -h -o '%P %D %T %G' | head -1))"
        exit 0
    fi
    state=$(timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
    if [[ "$state" == down* || "$state" == drain* ]]; then
        timeout 5 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    fi
    sleep 0.5
done
echo "slurm: the cluster did not come up; see $LOG_DIR/*.log" >&2
tail -n 20 "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log "$LOG_DIR"/slurmdbd.log >&2 || true
exit 1
