# Shared by participant.sbatch, group.sbatch and submit.sh (sourced, not executed).
#
# Site settings come from the environment (see site.env.example); submit.sh sources the site
# file and sbatch passes the environment on to the jobs (--export=ALL, Slurm's default).

# Participant labels, one per line, without "sub-": from $AGQUANT_PARTICIPANTS (a file with
# one label per line, '#' comments allowed) or else the participant_id column of
# $AGQUANT_BIDS_DIR/participants.tsv.
agquant_participants() {
    if [[ -n "${AGQUANT_PARTICIPANTS:-}" ]]; then
        sed -e 's/\r$//' -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' \
            "$AGQUANT_PARTICIPANTS" | sed -e '/^$/d' -e 's/^sub-//'
    else
        awk -F'\t' '{ sub(/\r$/, "") }
            NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") c = i; next }
            c && $c != "" { sub(/^sub-/, "", $c); print $c }' \
            "$AGQUANT_BIDS_DIR/participants.tsv"
    fi
}

# Fill the array AGQUANT_RUN with the command that starts bids-agquant: the Apptainer or
# Singularity image $AGQUANT_IMAGE (`exec --cleanenv` with the given binds), else
# $AGQUANT_VENV/bin/bids-agquant, else $AGQUANT_CMD (default: bids-agquant on PATH).
# Host paths are bound at the same path inside the container, so logs and the derivatives'
# DatasetLinks name the real locations.  Arguments: HOME_DIR TMP_DIR BIND_DIR...
agquant_command() {
    local home_dir=$1 tmp_dir=$2 dir
    shift 2
    if [[ -n "${AGQUANT_IMAGE:-}" ]]; then
        local runtime=${AGQUANT_CONTAINER_RUNTIME:-}
        if [[ -z "$runtime" ]]; then
            runtime=$(command -v apptainer || command -v singularity || true)
        fi
        if [[ -z "$runtime" ]]; then
            echo "AGQUANT_IMAGE is set but neither apptainer nor singularity is on PATH" >&2
            return 69
        fi
        AGQUANT_RUN=("$runtime" exec --cleanenv --home "$home_dir" -B "$tmp_dir:/tmp")
        for dir in "$@" ${AGQUANT_BINDS:-}; do
            AGQUANT_RUN+=(-B "$dir")
        done
        AGQUANT_RUN+=("$AGQUANT_IMAGE" bids-agquant)
    elif [[ -n "${AGQUANT_VENV:-}" ]]; then
        AGQUANT_RUN=("$AGQUANT_VENV/bin/bids-agquant")
    else
        # shellcheck disable=SC2206  # a command line, split on purpose
        AGQUANT_RUN=(${AGQUANT_CMD:-bids-agquant})
    fi
    # Outside a container, the defaults the image sets (one thread per process, no telemetry).
    export NIPYPE_NO_ET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=${ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS:-1}
    export LOGNAME=${LOGNAME:-$(id -un)}
}

# Options shared by both levels, from the site settings.
agquant_site_options() {
    AGQUANT_OPTS=()
    [[ -n "${AGQUANT_AGENT:-}" ]] && AGQUANT_OPTS+=(--agent "$AGQUANT_AGENT")
    [[ -n "${AGQUANT_BASELINE_SESSION:-}" ]] && \
        AGQUANT_OPTS+=(--baseline-session "$AGQUANT_BASELINE_SESSION")
    [[ -n "${AGQUANT_CONTOURS:-}" ]] && AGQUANT_OPTS+=(--contours "$AGQUANT_CONTOURS")
    return 0
}

# Run "$@" in the background and wait, so that the EXIT trap (clean-up) also runs when Slurm
# sends SIGTERM at the time limit or on scancel.
agquant_run_and_wait() {
    "$@" &
    local child=$!
    trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM INT
    wait "$child"
}
