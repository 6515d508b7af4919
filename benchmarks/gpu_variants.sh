#!/usr/bin/env bash
# Issue 8 on the real brain pairs: plain CycleGAN vs + MIND structure loss vs CUT, the same short
# budget each on a lent GPU (H200). The prepared AANLIB folders travel with the command (never
# committed: the images have no licence). pix2pix comes from gpu_pix2pix.sh's learning curve.
MINUTES=${MINUTES:-0.5}
source benchmarks/gpu_setup.sh
W=experiments/aanlib
run() {  # name, extra --set overrides
    local name=$1; shift
    python3 benchmarks/aanlib_experiment.py train --work $W --model cyclegan --run $W/runs/$name \
        --minutes "$MINUTES" --set train.device=cuda --set train.snapshot_minutes=null "$@" --overwrite 2>&1 \
        | grep -E "done:" | tail -1
    python3 benchmarks/aanlib_experiment.py evaluate --work $W --run $W/runs/$name --device cuda \
        --out "$OUT/$name.json" --overwrite 2>&1 | grep "head MAE"
}
run gpu_cyclegan
run gpu_cyclegan_mind --set model.lambda_struct=5
run gpu_cut --set model.name=cut
