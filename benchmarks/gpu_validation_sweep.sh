#!/usr/bin/env bash
# Issue 7: compare training settings of the AVX2 CPU hour on validation folds, not on the test split.
# Three folds hold out two training patients each (prepare --holdout) and train on the other four;
# the test patients 160 and 410 are not read. Every variant runs the steps one CPU hour buys for run
# D's layout (ngf 16 / ndf 16, 2-layer PatchGAN: 2595-2838 steps in the CPU hours, so 2700), with
# the step-driven schedule (constant lr for the first half, then linear to 0), on a lent GPU, all
# at once, fp32 as on the CPU. Only settings that leave the step's cost unchanged are compared, so
# one step count is fair to all. The GPU replays the CPU's step counts; a chosen setting still has
# to prove itself in a CPU hour on the test split.
#   DATA=.aanlib_data ROUND=1 bash benchmarks/gpu_validation_sweep.sh    # DATA: a copy of the AANLIB folder
# ROUND=3 swaps the ResNet generators for U-Nets, which cost less per step, so each runs the steps its
# own CPU hour buys (median step times on the AVX2 CPU; the comment beside each); ROUND=6 likewise
# for resize-convolution upsampling, on nine fold-seeds; ROUND=7 gives the control 4500 steps.
source benchmarks/gpu_setup.sh
DATA=${DATA:-.aanlib_data}
STEPS=${STEPS:-2700}
LIMIT_S=${LIMIT_S:-420}  # a run still going after this is stopped and left out of the summary
W=/tmp/sweep
rm -rf $W && mkdir -p $W/results  # a warm machine keeps the last round's folders
declare -A HOLDOUT=([a]=20,200 [b]=280,320 [c]=330,370)
declare -A SEED=([a]=0 [b]=1 [c]=2)
SEED_OFFSET=0  # round 2 replicates on other seeds: fold seeds 3, 4, 5
for fold in a b c; do
    python3 benchmarks/aanlib_experiment.py prepare --data "$DATA" --work $W/fold_$fold --holdout ${HOLDOUT[$fold]} || exit 1
    python3 benchmarks/aanlib_experiment.py baselines --work $W/fold_$fold > /dev/null || exit 1
done
nvidia-cuda-mps-control -d 2>/dev/null && echo "MPS on"  # lets the launch-bound runs share the GPU
layout="--set model.ngf=16 --set model.ndf=16 --set model.d_layers=2"
variant() {  # name, extra --set overrides; one run per fold
    local name=$1; shift
    for fold in a b c; do
        { timeout $LIMIT_S python3 benchmarks/aanlib_experiment.py train --work $W/fold_$fold --model cyclegan \
            --run $W/runs/${name}_$fold --minutes 30 --set train.device=cuda --set train.precision=fp32 \
            --set train.snapshot_minutes=null --set train.threads=1 --set train.steps=$STEPS \
            --set train.seed=$((SEED[$fold] + SEED_OFFSET)) --set train.log_every=100 $layout "$@" > $W/${name}_$fold.log 2>&1 &&
          python3 benchmarks/aanlib_experiment.py evaluate --work $W/fold_$fold --run $W/runs/${name}_$fold \
            --device cuda --out $W/results/${name}_$fold.json >> $W/${name}_$fold.log 2>&1
          echo "$name fold $fold: rc $?, $(grep -o 'head MAE *[0-9.]*' $W/${name}_$fold.log | tail -1)"; } &
    done
}
if [ "${ROUND:-1}" = 1 ]; then
    variant control
    variant lr1e-4 --set train.lr=0.0001
    variant vanilla --set model.gan_mode=vanilla
    variant affine5 --set data.affine=5
    variant cycle5 --set model.lambda_cycle=5
elif [ "$ROUND" = 3 ]; then  # U-Net generators (no dropout), cheaper per step: each at its own CPU hour's steps
    STEPS=10000 variant unet16 --set model.generator=unet --set model.ngf=16  # 0.35 s per CPU step
    STEPS=4300 variant unet32 --set model.generator=unet --set model.ngf=32   # 0.84 s per CPU step
elif [ "$ROUND" = 6 ]; then  # resize-convolution upsampling against the transposed convolutions, nine seeds
    # A resize-convolution step costs 1.20x a transposed one on the AVX2 CPU (median ratio of five
    # alternating probe pairs, docs/RESULTS.md), so its CPU hour buys 2700 / 1.20 = 2250 steps.
    for SEED_OFFSET in 0 3 6; do
        variant control_s$SEED_OFFSET
        STEPS=2250 variant resize_s$SEED_OFFSET --set model.upsample=resize
    done
    SEED_OFFSET=0
elif [ "$ROUND" = 7 ]; then  # the control with 4500 steps instead of 2700, on round 6's nine fold-seeds
    # On an H200 the nine ran at about 700 steps per minute each: give each run LIMIT_S=480 or more.
    for SEED_OFFSET in 0 3 6; do
        STEPS=4500 variant control4500_s$SEED_OFFSET
    done
    SEED_OFFSET=0
elif [ "$ROUND" = 4 ]; then  # body-masked translation and discriminators (the step costs the same)
    variant body_masked --set model.body_masked=true
else  # round 1's two gains, on other seeds and together
    SEED_OFFSET=3
    variant control_s3
    variant vanilla_s3 --set model.gan_mode=vanilla
    variant affine5_s3 --set data.affine=5
    variant vanilla_affine5_s3 --set model.gan_mode=vanilla --set data.affine=5
    SEED_OFFSET=0
    variant vanilla_affine5 --set model.gan_mode=vanilla --set data.affine=5
fi
( while sleep 60; do echo "progress: $(for f in $W/runs/*/log.csv; do tail -1 $f | cut -d, -f1; done | sort -n | tr '\n' ' ')"; done ) &
monitor=$!
wait $(jobs -p | grep -v "^$monitor$")
kill $monitor
python3 - "$W" "$OUT" <<'EOF'
import json, sys
from collections import defaultdict
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
keys = ("head_mae", "head_ssim", "head_psnr", "head_me", "mae")
rows = defaultdict(dict)
for fold in "abc":
    found = json.loads((work / f"fold_{fold}" / "results" / "baselines.json").read_text())["baselines"]
    for name in ("mr_as_ct", "constant_train_median"):
        rows[f"baseline: {name}"][fold] = {k: found[name]["means"][k] for k in keys}
results = work / "results"
for path in sorted(results.glob("*.json")):
    name, fold = path.stem.rsplit("_", 1)
    result = json.loads(path.read_text())
    rows[name][fold] = {k: result["means"][k] for k in keys} | {
        "cases": {c: m["head_mae"] for c, m in result["case_means"].items()}, "steps": result["generator"]["step"]}
lines = ["head MAE / head SSIM per fold, then means over the folds",
         "| variant | fold a (20, 200) | fold b (280, 320) | fold c (330, 370) | head MAE | head SSIM | head median error |",
         "|---|---|---|---|---|---|---|"]
for name, folds in rows.items():
    cells = [f"{folds[f]['head_mae']:.1f} / {folds[f]['head_ssim']:.2f}" if f in folds else "-" for f in "abc"]
    mean = lambda key: sum(v[key] for v in folds.values()) / len(folds)
    lines.append(f"| {name} | {' | '.join(cells)} | {mean('head_mae'):.1f} ({len(folds)} folds) | {mean('head_ssim'):.2f} | {mean('head_me'):+.1f} |")
print("\n".join(lines))
(out / "sweep.md").write_text("\n".join(lines) + "\n")
(out / "sweep.json").write_text(json.dumps(rows, indent=1))
EOF
