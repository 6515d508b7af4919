#!/usr/bin/env bash
# CycleGAN, CycleGAN + MIND structure loss and CUT with the same short budget each on a lent GPU,
# on the validation fold. Prepare here first and carry runs/aanlib/validation (never committed: the
# images have no licence). pix2pix comes from gpu_pix2pix.sh.
MINUTES=${MINUTES:-0.5}
source benchmarks/gpu_setup.sh
R=runs/aanlib/validation/runs
run() {  # name, extra --set overrides
    local name=$1; shift
    python3 -m experiments.aanlib train --fold validation --run $R/$name --minutes "$MINUTES" \
        --set train.device=cuda --set train.snapshot_minutes=null "$@" --overwrite 2>&1 | grep -E "done:" | tail -1
    python3 -m experiments.aanlib evaluate --fold validation --run $R/$name --device cuda \
        --out "$OUT/$name.json" --overwrite 2>&1 | grep "head MAE"
}
run cyclegan
run cyclegan_mind --set model.lambda_struct=5
run cut --set model.name=cut
