#!/usr/bin/env bash
# The final stage fixed in docs/RESULTS.md ("The unpaired recipe: rules fixed before its runs"): the
# recipe the confirmation chose (the aanlib_cyclegan preset, with R1 since the confirmation; RECIPE
# adds --set options to it), trained on all six training patients at 256 x 256, 3,000 steps,
# seeds 0-4, with synthct train's default restarts; each finished run's test-split score goes once
# into the committed ledger (plainly and
# with translate's defaults). Runs go through queue.sh (named final_seed<N>), so the stage may be
# stopped and started again at any time. Ends with the recipe's median and range over the seeds,
# read from the ledger: a run scored already is neither trained nor scored again, even in a fresh
# clone without its folder.
#
#   bash experiments/aanlib/final.sh
#   JOBS=5 DEVICE=cuda bash experiments/aanlib/final.sh   # a lent GPU, every run at once
#                                                        # (carry runs/aanlib/test)
set -u
RECIPE=${RECIPE:-}
SEEDS=${SEEDS:-0 1 2 3 4}
WORK=${WORK:-runs/aanlib/test}
export LEDGER=${LEDGER:-experiments/aanlib/ledger.csv}
source experiments/aanlib/lanes.sh
RESTARTS=$($PY -c "from synthct.engine.restarts import DEFAULT_RESTARTS; print(DEFAULT_RESTARTS)") || exit 2

jobs=()
for seed in $SEEDS; do jobs+=("$seed|final|$RECIPE"); done
final_run() {  # seed, name, the recipe's options
    FOLD=test NAME=$2 DEFAULTS=1 EXTRA="--restarts $RESTARTS --set train.device=$DEVICE $3" bash experiments/aanlib/queue.sh "cyclegan:$1"
}
run_lanes final final_run

runs=$(for seed in $SEEDS; do printf '%s,' "final_seed$seed"; done)
mkdir -p "$W/results"
$PY -m experiments.aanlib seeds --work "$W" --ledger "$LEDGER" --recipe "final=${runs%,}" --tta flip --mask auto \
    | tee "$W/results/final.md"
if [ -n "${OUT:-}" ]; then  # a lent machine: bring back the scores, the ledger, logs and health verdicts
    cp "$W/results/final"* "$W"/final-lane*.log "$LEDGER" "$OUT"/
    for run in "$W"/runs/final_seed*; do
        mkdir -p "$OUT/$(basename "$run")"
        cp "$run"/{health.json,log.csv,config.yaml} "$OUT/$(basename "$run")"/ 2>/dev/null
    done
fi
