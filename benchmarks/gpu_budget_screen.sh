#!/usr/bin/env bash
# Issue 7: which training layout makes the most of 60 minutes of the 2-core CPU? Each variant runs
# the number of steps that 60 CPU-minutes buy for it (STEPS_* below, measured with
# `aanlib_experiment.py train --set train.steps=12` on the CPU and written into docs/RESULTS.md),
# with the step-driven schedule (constant lr for the first half, then linear to 0), on a lent GPU,
# several at once. The prepared AANLIB folders travel with the command (never committed).
# The GPU only replays the CPU's step counts quickly; the reported result is the CPU run itself.
source benchmarks/gpu_setup.sh
W=experiments/aanlib
nvidia-cuda-mps-control -d 2>/dev/null && echo "MPS on"  # lets the launch-bound runs share the GPU
variant() {  # name, steps, extra --set overrides (only the result JSONs come back: 8 files at most)
    local name=$1 steps=$2; shift 2
    { python3 benchmarks/aanlib_experiment.py train --work $W --model cyclegan --run /tmp/runs/$name \
        --minutes 30 --set train.device=cuda --set train.snapshot_minutes=null --set train.threads=2 \
        --set train.steps="$steps" --set train.log_every=100 "$@" --overwrite > "/tmp/$name.log" 2>&1
      python3 benchmarks/aanlib_experiment.py evaluate --work $W --run /tmp/runs/$name --device cuda \
        --out "$OUT/$name.json" --overwrite 2>&1 | grep "head MAE"; } &
}
# Steps per 60 CPU-minutes, measured on the AVX2 EPYC (2 cores, fp32): see docs/RESULTS.md.
if [ "${ROUND:-1}" = 1 ]; then  # resolution: full slices vs random native-resolution crops
    variant full256 920
    variant crop192 1440 --set data.size=192 --set data.resize=crop
    variant crop128 3770 --set data.size=128 --set data.resize=crop
    variant crop128_seed1 3770 --set data.size=128 --set data.resize=crop --set train.seed=1
    variant crop128_mind 2780 --set data.size=128 --set data.resize=crop --set model.lambda_struct=5
    variant full256_2591 2591  # the earlier AVX512-BF16 CPU's hour: calibrates the GPU replay
elif [ "$ROUND" = 2 ]; then  # width: narrower networks buy more full-resolution steps
    variant g16 2400 --set model.ngf=16
    variant g16_seed1 2400 --set model.ngf=16 --set train.seed=1
    variant g16_d16 2700 --set model.ngf=16 --set model.ndf=16
    variant g24 1500 --set model.ngf=24
    variant g32_b6 1200 --set model.blocks=6
    variant g16_crop192 3700 --set model.ngf=16 --set data.size=192 --set data.resize=crop
    variant g16_mind 2350 --set model.ngf=16 --set model.lambda_struct=5
    variant g16_decay03 2400 --set model.ngf=16 --set train.decay_start=0.3
elif [ "$ROUND" = 4 ]; then  # progressive resizing: whole slices at 128 px first, then 256
    # CPU steps: 128 px 0.49 s (ngf 16 / ndf 16) and 1.19 s (ngf 32), 256 px 1.6 s and 3.7 s.
    # Half the hour coarse (p50) or three quarters (p75); the lr decays over the second half of
    # the hour, so as step fractions: coarse_until = decay_start = the first half's share.
    p16="--set model.ngf=16 --set model.ndf=16"
    variant p16_50 4585 $p16 --set train.coarse_size=128 --set train.coarse_until=0.755 --set train.decay_start=0.755
    variant p16_50_seed1 4585 $p16 --set train.coarse_size=128 --set train.coarse_until=0.755 --set train.decay_start=0.755 --set train.seed=1
    variant p16_50_seed2 4585 $p16 --set train.coarse_size=128 --set train.coarse_until=0.755 --set train.decay_start=0.755 --set train.seed=2
    variant p32_50 1961 --set train.coarse_size=128 --set train.coarse_until=0.752 --set train.decay_start=0.752
    variant p32_50_seed1 1961 --set train.coarse_size=128 --set train.coarse_until=0.752 --set train.decay_start=0.752 --set train.seed=1
    variant p32_75 2456 --set train.coarse_size=128 --set train.coarse_until=0.90 --set train.decay_start=0.60
    variant p32_75_seed1 2456 --set train.coarse_size=128 --set train.coarse_until=0.90 --set train.decay_start=0.60 --set train.seed=1
    variant g16_d16_seed2 2500 $p16 --set train.seed=2  # the full-resolution layout, another seed
elif [ "$ROUND" = 5 ]; then  # what makes the full-resolution ngf 16 / ndf 16 layout lock in (seed 2 failed: 78.4)
    p16="--set model.ngf=16 --set model.ndf=16"
    for seed in 0 1 2; do variant m16_mind5_seed$seed 2350 $p16 --set model.lambda_struct=5 --set train.seed=$seed; done
    variant m16_mind15_seed2 2350 $p16 --set model.lambda_struct=15 --set train.seed=2
    variant m16_ngfloss5_seed2 2400 $p16 --set model.lambda_struct=5 --set model.struct_loss=ngf --set train.seed=2
    variant m16_lr4_seed2 2500 $p16 --set train.lr=0.0004 --set train.seed=2
    variant m16_dl2_seed2 2700 $p16 --set model.d_layers=2 --set train.seed=2
    variant m16_cyc20_seed2 2500 $p16 --set model.lambda_cycle=20 --set train.seed=2
else  # seeds of the chosen layout (ngf 16): how much of the outcome is luck
    for seed in 2 3 4 5; do variant g16_seed$seed 2250 --set model.ngf=16 --set train.seed=$seed; done
fi
wait
