# Sourced by screen.sh and confirm.sh: their environment, and a list of jobs run in JOBS lanes.
JOBS=${JOBS:-2}
DEVICE=${DEVICE:-cpu}
SEEDS=${SEEDS:-0 1 2}
W=${WORK:-runs/aanlib/validation}
export WORK=$W
if [ "$DEVICE" = cuda ]; then
    source benchmarks/gpu_setup.sh
    export PY=python3
fi
PY=${PY:-python}

# run_lanes NAME JOB: the jobs of the array `jobs` ("seed|name|options"), in their order, through
# JOBS lanes: each lane takes the next job no lane has taken, runs it through the function JOB
# (seed, name, options), stops at the first that fails, and logs to $W/NAME-lane<l>.log. A lane
# that finishes early takes on the rest (a run scored already is skipped at once), so lanes stay
# busy however long their runs take. Returns when every lane has ended.
run_lanes() {
    local l taken
    taken=$(mktemp -d)
    for ((l = 0; l < JOBS; l++)); do
        (
            for ((i = 0; i < ${#jobs[@]}; i++)); do
                mkdir "$taken/$i" 2> /dev/null || continue  # atomic: one lane takes each job
                IFS='|' read -r seed name sets <<< "${jobs[$i]}"
                "$2" "$seed" "$name" "$sets" || exit $?
            done
        ) > "$W/$1-lane$l.log" 2>&1 &
    done
    wait
    rm -rf "$taken"
}
