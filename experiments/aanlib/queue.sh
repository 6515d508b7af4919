#!/usr/bin/env bash
# Run a list of trainings one after another, each to STEPS steps, and score each finished run
# once (twice with DEFAULTS=1). Safe to stop at any time and start again with the same list: a run
# that was stopped continues from its last checkpoint (`synthct train --resume`), a finished run is
# not trained again, a scored run is skipped, and a run is scored only once its generator is at
# STEPS steps.
#
#   FOLD=test STEPS=3000 bash experiments/aanlib/queue.sh pix2pix:0 reggan:0 semi:0 regression:1
#
# A job is MODEL:SEED with MODEL one of cyclegan, pix2pix, reggan, regression, or semi (the
# semi-supervised CycleGAN, --paired-patients PAIRED, default 20). EXTRA holds further arguments
# for `experiments.aanlib train` (e.g. EXTRA="--set model.lambda_smooth=1"); THREADS torch threads
# per run (two queues side by side on two cores: THREADS=1 each). Runs go to WORK/runs/<run>, with
# <run> = <model>_seed<N>, or NAME_seed<N> when NAME is set (a screened variant: NAME=r1
# EXTRA="--set model.r1_gamma=10"). Each finished run is scored plainly and, with DEFAULTS=1, also
# with synthct translate's defaults (--tta flip --mask auto); test-split scorings are recorded in
# LEDGER (default: the committed ledger), and a test-split run the ledger holds scored at STEPS is
# skipped even when its folder is gone.
set -u
FOLD=${FOLD:-test}
STEPS=${STEPS:-3000}
PAIRED=${PAIRED:-20}
THREADS=${THREADS:-1}
EXTRA=${EXTRA:-}
NAME=${NAME:-}
DEFAULTS=${DEFAULTS:-0}
WORK=${WORK:-runs/aanlib/$FOLD}
PY=${PY:-python}
LEDGER=${LEDGER:-experiments/aanlib/ledger.csv}

step_of() {  # the step of a run's exported MR->CT generator, 0 when there is none
    $PY -c "import json, sys; print(json.load(open(sys.argv[1]))['step'])" "$1/generator_mr2ct.json" 2>/dev/null || echo 0
}

for job in "$@"; do
    model=${job%%:*}
    seed=${job##*:}
    if [ "$model" = semi ]; then
        args=(--paired-patients "$PAIRED"); run=cyclegan_pairs-${PAIRED//,/-}_seed$seed
    else
        args=(--model "$model"); run=${model}_seed$seed
    fi
    [ -n "$NAME" ] && run=${NAME}_seed$seed
    dir=$WORK/runs/$run
    scorings=("")
    [ "$DEFAULTS" = 1 ] && scorings+=("--tta flip --mask auto")
    suffixes=("" _tta-flip_mask-auto)
    scored=0
    for i in "${!scorings[@]}"; do
        if [ -f "$WORK/results/$run${suffixes[$i]}.json" ]; then
            scored=$((scored + 1))
        elif [ "$FOLD" = test ]; then  # the ledger counts too: a finished run's folder may be gone (a fresh clone)
            # shellcheck disable=SC2086  # a scoring is a list of arguments
            $PY -m experiments.aanlib scored --ledger "$LEDGER" --run "$run" --step "$STEPS" ${scorings[$i]}
            case $? in 0) scored=$((scored + 1)) ;; 1) ;; *) exit 2 ;; esac  # 2: not a ledger
        fi
    done
    [ "$scored" = "${#scorings[@]}" ] && { echo "$run: scored already"; continue; }
    if [ "$(step_of "$dir")" != "$STEPS" ]; then
        if [ -d "$dir/checkpoints" ]; then
            echo "$run: resuming at step $(step_of "$dir")"
            $PY -m synthct train --resume "$dir" || exit $?
        else
            echo "$run: training"
            # shellcheck disable=SC2086  # EXTRA is a list of arguments
            $PY -m experiments.aanlib train --fold "$FOLD" --work "$WORK" "${args[@]}" --run "$dir" --steps "$STEPS" \
                --seed "$seed" --set train.threads="$THREADS" --set train.checkpoint_every=250 --overwrite $EXTRA \
                || exit $?
        fi
    fi
    if [ "$(step_of "$dir")" != "$STEPS" ]; then
        echo "$run: stopped at step $(step_of "$dir"), not scored; run the queue again to continue" >&2
        exit 1
    fi
    for i in "${!scorings[@]}"; do
        [ -f "$WORK/results/$run${suffixes[$i]}.json" ] && continue
        # shellcheck disable=SC2086  # a scoring is a list of arguments
        $PY -m experiments.aanlib evaluate --fold "$FOLD" --work "$WORK" --run "$dir" --ledger "$LEDGER" ${scorings[$i]} \
            || exit $?
    done
done
