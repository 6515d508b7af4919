# Sourced by benchmarks/gpu_check.sh and experiments/aanlib/gpu_*.sh: a lent GPU machine's python3 has
# torch with CUDA but no network, so SimpleITK and pydicom travel as wheels in .gpuwheels/ and synthct is
# installed from the tree.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-index .gpuwheels/*.whl 2>&1 | tail -1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
