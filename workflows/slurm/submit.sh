#!/bin/bash
# Queue a bids-agquant study on Slurm: one participant per array task, then the group level.
#
#   workflows/slurm/submit.sh [--dry-run] SITE_ENV [-- EXTRA_BIDS_AGQUANT_ARGS...]
#
# SITE_ENV is a copy of site.env.example (paths, image or venv, agent preset, baseline
# session, contours, resources). The participant list is frozen at submission time into
# $AGQUANT_LOG_DIR/participants-<date>.txt and the array is sized to it; the group job gets
# --dependency=afterok:<array job> and --kill-on-invalid-dep=yes. Prints both job ids.
# --dry-run prints the sbatch commands instead of running them.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

dry_run=0
if [[ "${1:-}" == "--dry-run" || "${1:-}" == "-n" ]]; then
    dry_run=1
    shift
fi
if [[ $# -lt 1 || "$1" == -* ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
fi
site_env=$1
shift
if [[ "${1:-}" == "--" ]]; then
    shift
fi

set -a
# shellcheck source=workflows/slurm/site.env.example
. "$site_env"
set +a
: "${AGQUANT_BIDS_DIR:?$site_env must set AGQUANT_BIDS_DIR}"
: "${AGQUANT_OUTPUT_DIR:?$site_env must set AGQUANT_OUTPUT_DIR}"
export AGQUANT_SLURM_DIR="$here"
export AGQUANT_LOG_DIR=${AGQUANT_LOG_DIR:-$PWD/agquant-logs}
# shellcheck source=workflows/slurm/common.sh
. "$here/common.sh"

mkdir -p "$AGQUANT_LOG_DIR"
list="$AGQUANT_LOG_DIR/participants-$(date +%Y%m%d-%H%M%S)-$$.txt"
agquant_participants > "$list"
n=$(wc -l < "$list")
if (( n == 0 )); then
    echo "no participants found (AGQUANT_PARTICIPANTS or $AGQUANT_BIDS_DIR/participants.tsv)" >&2
    exit 66
fi
export AGQUANT_PARTICIPANTS="$list"

# Site-wide sbatch options (partition, account, QOS...), split on purpose.
# shellcheck disable=SC2206
site_sbatch=(${AGQUANT_SBATCH_ARGS:-})
array="0-$(( n - 1 ))${AGQUANT_ARRAY_LIMIT:+%$AGQUANT_ARRAY_LIMIT}"
participant_cmd=(sbatch --parsable "${site_sbatch[@]}" --array="$array"
    --job-name=agquant-participant
    --cpus-per-task="${AGQUANT_CPUS:-4}" --mem="${AGQUANT_MEM:-16G}"
    --time="${AGQUANT_TIME:-04:00:00}"
    --output="$AGQUANT_LOG_DIR/%x-%A_%a.out"
    "$here/participant.sbatch" "$@")
group_cmd=(sbatch --parsable "${site_sbatch[@]}" --job-name=agquant-group
    --cpus-per-task=1 --mem="${AGQUANT_GROUP_MEM:-4G}" --time="${AGQUANT_GROUP_TIME:-01:00:00}"
    --output="$AGQUANT_LOG_DIR/%x-%j.out" --kill-on-invalid-dep=yes)

if (( dry_run )); then
    echo "participants ($n): $list"
    printf '%q ' "${participant_cmd[@]}"; echo
    printf '%q ' "${group_cmd[@]}" "--dependency=afterok:<ARRAY_JOB_ID>" "$here/group.sbatch"
    echo
    exit 0
fi
array_job=$("${participant_cmd[@]}")
array_job=${array_job%%;*}          # --parsable prints "jobid[;cluster]"
group_job=$("${group_cmd[@]}" --dependency="afterok:$array_job" "$here/group.sbatch")
group_job=${group_job%%;*}
echo "participants: $n (list: $list)"
echo "participant array job: $array_job"
echo "group job: $group_job (after every participant task succeeded)"
echo "logs: $AGQUANT_LOG_DIR    watch: squeue -j $array_job,$group_job"
