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

# run_lanes NAME JOB: every job of the array `jobs` ("seed|name|options") goes to lane i mod JOBS;
# each lane runs its jobs one after another through the function JOB (seed, name, options), stops
# at the first that fails, and logs to $W/NAME-lane<l>.log. Returns when every lane has ended.
run_lanes() {
    local l
    for ((l = 0; l < JOBS; l++)); do
        (
            for ((i = l; i < ${#jobs[@]}; i += JOBS)); do
                IFS='|' read -r seed name sets <<< "${jobs[$i]}"
                "$2" "$seed" "$name" "$sets" || exit $?
            done
        ) > "$W/$1-lane$l.log" 2>&1 &
    done
    wait
}
