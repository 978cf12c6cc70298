#!/usr/bin/env bash
# Start a throwaway single-node Slurm cluster on this machine (machine-notes.md §7).
#
#   .ci/slurm_start.sh STATE_DIR        then:  export SLURM_CONF=STATE_DIR/slurm.conf
#   ...
#   .ci/slurm_stop.sh STATE_DIR
#
# Needs root and Debian's slurm-wlm + munge. slurm.conf, spool directories, logs and PID files
# all live in STATE_DIR (nothing under /etc/slurm is touched). munged is started only when
# none answers `munge -n`; its PID is then recorded in STATE_DIR/munged.pid so that
# slurm_stop.sh stops only what this script started. Waits until the node is idle.
# Ports: SLURMCTLD_PORT / SLURMD_PORT (default 6817 / 6818).
set -euo pipefail
STATE=$(realpath -m "${1:?usage: slurm_start.sh STATE_DIR}")
HOST=$(hostname -s)
NCPU=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) * 8 / 10 ))
mkdir -p "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log"

# --- munge (authentication) ---------------------------------------------------------------
if ! munge -n >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge /etc/munge/munge.key
    chmod 0755 /run/munge
    chmod 0600 /etc/munge/munge.key
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do
        munge -n >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n >/dev/null || { echo "munged did not start" >&2; exit 1; }
    cp /run/munge/munged.pid "$STATE/munged.pid"
fi

# --- slurm.conf ------------------------------------------------------------------------------
# DefMemPerCPU: with CR_Core_Memory a job that asks for no memory would get the whole node and
# array tasks would run one after the other. kill_invalid_depend: a job whose dependency can
# never be satisfied (a participant failed) is cancelled instead of pending forever.
cat > "$STATE/slurm.conf" <<CONF
ClusterName=agquantci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerParameters=kill_invalid_depend
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
KillWait=10
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$STATE/slurm.conf"

# --- daemons ---------------------------------------------------------------------------------
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N "$HOST"
for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed)'; then
        echo "slurm ready: SLURM_CONF=$SLURM_CONF (node $HOST, $NCPU CPUs, ${MEM_MB} MB)"
        exit 0
    fi
    sleep 0.5
done
echo "slurm did not become idle; logs in $STATE/log" >&2
sinfo >&2 || true
tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
exit 1
