#!/usr/bin/env bash
# Paired pix2pix upper bound of the real-scan experiment, trained on a lent GPU (H200) for a few
# minutes; the prepared folders travel with the command (never committed: the images have no licence).
MINUTES=${MINUTES:-3.5}
source benchmarks/gpu_setup.sh
W=experiments/aanlib
python3 benchmarks/aanlib_experiment.py train --work $W --model pix2pix --minutes "$MINUTES" \
    --set train.device=cuda --set train.snapshot_minutes=0.5 --set train.threads=4 --overwrite 2>&1 | grep -v "step/s\|s/step" | tail -5
python3 benchmarks/aanlib_experiment.py evaluate --work $W --run $W/runs/pix2pix --device cuda --overwrite 2>&1 | tail -15
python3 benchmarks/aanlib_experiment.py curve --work $W --run $W/runs/pix2pix --device cuda --overwrite 2>&1 | tail -15
cp $W/results/*.json $W/results/*.png $W/runs/pix2pix/log.csv $W/runs/pix2pix/config.yaml "$OUT"/ 2>/dev/null
ls "$OUT"
