#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md, as run on a lent GPU machine (its python3 has torch
# with CUDA; SimpleITK and pydicom are carried as wheels in .gpuwheels/ because it has no network).
source benchmarks/gpu_setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" >> "$OUT/gpu.txt"
timeout 300 python3 benchmarks/bench_perf.py --device cuda --repeats 5 --json "$OUT/gpu.json" --markdown "$OUT/gpu.md" 2>&1 | tail -40
timeout 150 python3 benchmarks/bench_perf.py --device cuda --compile --only train inference --repeats 5 \
    --json "$OUT/gpu_compile.json" --markdown "$OUT/gpu_compile.md" 2>&1 | tail -20
