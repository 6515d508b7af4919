#!/usr/bin/env bash
# The confirmation fixed in docs/RESULTS.md ("The unpaired recipe: rules fixed before its runs"): the
# candidate recipe (the levers the screening promoted, as --set options in CANDIDATE) against the
# aanlib_cyclegan preset as it was before the confirmation put R1 into it (model.r1_gamma=0) at
# 256 x 256, 3,000 steps, seeds 0-2, trained on the validation fold; then
# the preset alone on seeds 3-6 for the health check's table (those runs choose nothing). Ends with
# both recipes' medians and every run's health verdict against its outcome. Runs go through
# queue.sh, so the confirmation may be stopped and started again at any time.
#
#   CANDIDATE="--set model.diffaugment=true" bash experiments/aanlib/confirm.sh
#   CANDIDATE=... JOBS=9 DEVICE=cuda bash experiments/aanlib/confirm.sh   # a lent GPU, every run at once
#                                                                        # (carry runs/aanlib/validation)
set -u
: "${CANDIDATE:?CANDIDATE holds the promoted levers as --set options}"
source experiments/aanlib/lanes.sh
HEALTH_SEEDS=${HEALTH_SEEDS:-3 4 5 6}

# Seed by seed, so that a confirmation stopped early holds whole same-seed comparisons. The
# preset's runs keep queue.sh's plain names (cyclegan_seed<N>): seed 0 is the validation run
# already in docs/RESULTS.md's health table.
jobs=()
for seed in $SEEDS; do jobs+=("$seed|preset|" "$seed|recipe|$CANDIDATE"); done
for seed in $HEALTH_SEEDS; do jobs+=("$seed|preset|"); done

confirm_run() {  # seed, preset or recipe, its options
    local name=$2 options=$3
    if [ "$name" = preset ]; then name="" options="--set model.r1_gamma=0"; fi
    FOLD=validation NAME=$name DEFAULTS=1 EXTRA="--set train.device=$DEVICE $options" \
        bash experiments/aanlib/queue.sh "cyclegan:$1"
}
run_lanes confirm confirm_run

runs() { for seed in $2; do printf '%s,' "$1_seed$seed"; done; }
preset=$(runs cyclegan "$SEEDS")
recipe=$(runs recipe "$SEEDS")
health=$(runs cyclegan "$HEALTH_SEEDS")
$PY -m experiments.aanlib seeds --work "$W" --recipe "preset=${preset%,}" --recipe "recipe=${recipe%,}" \
    --recipe "preset, health seeds=${health%,}" --tta flip --mask auto | tee "$W/results/confirm.md"
if [ -n "${OUT:-}" ]; then  # a lent machine: bring back the scores, logs and health verdicts
    cp "$W/results/confirm.md" "$W"/confirm-lane*.log "$OUT"/
    for run in "$W"/runs/cyclegan_seed* "$W"/runs/recipe_seed*; do
        mkdir -p "$OUT/$(basename "$run")"
        cp "$run"/{health.json,log.csv,config.yaml} "$OUT/$(basename "$run")"/ 2>/dev/null
    done
fi
