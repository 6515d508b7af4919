#!/usr/bin/env bash
# Compare CycleGAN settings on the validation fold (train on patients 20, 280, 320, 370; score 200
# and 330), several seeds each, all at once on a lent GPU in fp32. The test split is not read.
# Prepare here first and carry the prepared folder (never committed: the images have no licence):
#   python -m experiments.aanlib prepare --fold validation
#   STEPS=2700 SEEDS="0 1 2" bash experiments/aanlib/gpu_validation_sweep.sh   (carry runs/aanlib/validation)
# Each variant is a name and its --set overrides; edit the list at the bottom.
source benchmarks/gpu_setup.sh
STEPS=${STEPS:-2700}
SEEDS=${SEEDS:-0 1 2}
LIMIT_S=${LIMIT_S:-420}  # a run still going after this is stopped and left out of the summary
W=runs/aanlib/validation
RUNS=/tmp/sweep
rm -rf $RUNS && mkdir -p $RUNS  # a warm machine keeps the last sweep's runs
nvidia-cuda-mps-control -d 2>/dev/null && echo "MPS on"  # lets the launch-bound runs share the GPU
variant() {  # name, extra --set overrides; one run per seed
    local name=$1; shift
    for seed in $SEEDS; do
        { timeout $LIMIT_S python3 -m experiments.aanlib train --fold validation --run $RUNS/${name}_s$seed \
            --steps $STEPS --set train.device=cuda --set train.precision=fp32 --set train.snapshot_minutes=null \
            --set train.threads=1 --set train.seed=$seed --set train.log_every=100 "$@" > $RUNS/${name}_s$seed.log 2>&1 &&
          python3 -m experiments.aanlib evaluate --fold validation --run $RUNS/${name}_s$seed --device cuda \
            --out "$OUT/${name}_s$seed.json" >> $RUNS/${name}_s$seed.log 2>&1
          echo "$name seed $seed: rc $?, $(grep -o 'head MAE *[0-9.]*' $RUNS/${name}_s$seed.log | tail -1)"; } &
    done
}
variant control
variant vanilla --set model.gan_mode=vanilla
variant affine5 --set data.affine=5
wait
python3 - "$OUT" <<'PY'
import json, statistics, sys
from collections import defaultdict
from pathlib import Path
out = Path(sys.argv[1])
found = defaultdict(list)
for path in sorted(out.glob("*_s*.json")):
    found[path.stem.rsplit("_s", 1)[0]].append(json.loads(path.read_text())["means"]["head_mae"])
lines = ["| variant | head MAE, median over seeds | range | seeds |", "|---|---|---|---|"]
lines += [f"| {name} | {statistics.median(v):.1f} | {min(v):.1f}-{max(v):.1f} | {len(v)} |" for name, v in found.items()]
print("\n".join(lines))
(out / "sweep.md").write_text("\n".join(lines) + "\n")
PY
