#!/usr/bin/env bash
# The paired pix2pix upper bound on the test fold, trained on a lent GPU for a few minutes, with its
# learning curve. Prepare here first and carry runs/aanlib/test (never committed: the images have no
# licence). The scorings of the test split are appended to the ledger on the GPU machine; the copy
# in $OUT/ledger.csv carries its new rows back to experiments/aanlib/ledger.csv.
MINUTES=${MINUTES:-3.5}
source benchmarks/gpu_setup.sh
R=runs/aanlib/test/runs/pix2pix
python3 -m experiments.aanlib train --model pix2pix --minutes "$MINUTES" --set train.device=cuda \
    --set train.snapshot_minutes=0.5 --set train.threads=4 --overwrite 2>&1 | grep -v "step/s\|s/step" | tail -5
python3 -m experiments.aanlib evaluate --run $R --device cuda --overwrite 2>&1 | tail -3
python3 -m experiments.aanlib curve --run $R --device cuda --overwrite 2>&1 | tail -15
cp runs/aanlib/test/results/*.json runs/aanlib/test/results/*.png $R/log.csv $R/config.yaml experiments/aanlib/ledger.csv "$OUT"/
ls "$OUT"
