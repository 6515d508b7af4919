#!/usr/bin/env bash
# The limited-data levers' screening fixed in docs/RESULTS.md ("The unpaired recipe: rules fixed
# before its runs"): the aanlib_cyclegan preset and each lever alone on it, 128 x 128 slices, 3,000
# steps, seeds 0-2, trained on the validation fold; then the promotion table. Runs go through
# queue.sh, so the screening may be stopped and started again at any time. DiffAugment, spectral
# normalisation and cycle noise were not promoted and left synthct: their runs need commit 8519d03.
#
#   python -m experiments.aanlib prepare --fold validation      # once
#   bash experiments/aanlib/screen.sh                            # two cores: two queues of one thread
#   JOBS=18 DEVICE=cuda bash experiments/aanlib/screen.sh        # a lent GPU, every run at once
#                                                                # (carry runs/aanlib/validation)
set -u
source experiments/aanlib/lanes.sh
PREFIX=screen128
variants=(
    "preset|"
    "diffaugment|--set model.diffaugment=true"
    "r1|--set model.r1_gamma=10"
    "spectral_norm|--set model.spectral_norm=true"
    "cycle_noise|--set model.cycle_noise=0.1"
    "mind|--set model.lambda_struct=5"
)

# Seed by seed, so that a screening stopped early holds whole same-seed comparisons.
jobs=()
for seed in $SEEDS; do
    for variant in "${variants[@]}"; do jobs+=("$seed|$variant"); done
done

screen_run() {  # seed, variant, its options; each on the preset as screened, before R1 joined it
    FOLD=validation NAME=$PREFIX-$2 DEFAULTS=1 \
        EXTRA="--set data.size=128 --set train.device=$DEVICE --set model.r1_gamma=0 $3" \
        bash experiments/aanlib/queue.sh "cyclegan:$1"
}
run_lanes "$PREFIX" screen_run

recipes=()
for variant in "${variants[@]}"; do
    name=${variant%%|*}
    runs=$(for seed in $SEEDS; do printf '%s,' "$PREFIX-${name}_seed$seed"; done)
    recipes+=(--recipe "$name=${runs%,}")
done
$PY -m experiments.aanlib seeds --work "$W" "${recipes[@]}" --against preset --tta flip --mask auto \
    | tee "$W/results/$PREFIX.md"
if [ -n "${OUT:-}" ]; then  # a lent machine: bring back the scores, logs and health verdicts
    cp "$W/results/$PREFIX"* "$W/$PREFIX"-lane*.log "$OUT"/
    for run in "$W"/runs/"$PREFIX"-*; do
        mkdir -p "$OUT/$(basename "$run")"
        cp "$run"/{health.json,log.csv,config.yaml} "$OUT/$(basename "$run")"/ 2>/dev/null
    done
fi
