#!/usr/bin/env bash
# Stop the cluster started by .ci/slurm_start.sh STATE_DIR, by PID (never by name): slurmd,
# slurmctld, and munged only if slurm_start.sh started it. Cancels remaining jobs first.
# PID 1 here does not reap orphans, so a stopped daemon may linger as a zombie: "stopped"
# means gone or state Z.
set -uo pipefail
STATE=$(realpath -m "${1:?usage: slurm_stop.sh STATE_DIR}")

alive() {  # PID is running (not a zombie)
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z ]]
}

stop_pid_file() {
    local file=$1 pid
    [[ -s "$file" ]] || return 0
    pid=$(<"$file")
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            alive "$pid" || break
            sleep 0.2
        done
        if alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

if [[ -f "$STATE/slurm.conf" ]] && [[ -s "$STATE/slurmctld.pid" ]] && alive "$(<"$STATE/slurmctld.pid")"; then
    export SLURM_CONF="$STATE/slurm.conf"
    timeout 10 scancel --full --quiet --user "$(id -un)" || true
    for _ in $(seq 1 30); do   # let the job steps finish before slurmd goes
        [[ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ]] && break
        sleep 0.5
    done
fi
stop_pid_file "$STATE/slurmd.pid"
stop_pid_file "$STATE/slurmctld.pid"
stop_pid_file "$STATE/munged.pid"
echo "slurm stopped ($STATE)"
