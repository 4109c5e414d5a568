#!/usr/bin/env bash
# Run every benchmark suite on one GPU and write benchmark.json, benchmark.md, benchmark.png and
# the act profile traces to one folder.
#
#   bash scripts/gpu_benchmark.sh [OUT_DIR]      (default: runs/gpu_benchmark)
#
# Needs the CUDA build of jax in the Python it runs ($PYTHON if set, else python3; pip install
# -e ".[gpu]", or scripts/download_wheels.sh on a host without network); the script checks
# that jax finds a GPU and stops otherwise. The sizes aim to finish in under 8 minutes on one
# current data-centre GPU (NOTE: an estimate, not yet measured). The NumPy reference runs on
# the host CPU in the same run, so the report's ratios compare the GPU with that CPU. A case
# that does not fit in the GPU's memory is skipped and listed in the outputs, and the run goes
# on with the other cases.
set -euo pipefail
# A relative OUT_DIR, or a relative path in $PYTHON, is resolved against the caller's current
# directory. The default OUT_DIR is in the repository root, where the script runs.
out="${1:-runs/gpu_benchmark}"
if [[ -n "${1:-}" && "$out" != /* ]]; then
    out="$PWD/$out"
fi
python="${PYTHON:-python3}"
if [[ "$python" == */* && "$python" != /* ]]; then
    python="$PWD/$python"
fi
cd "$(dirname "$0")/.."

"$python" - <<'PY'
import sys

try:
    import jax
except ModuleNotFoundError:
    sys.exit(f"jax is not installed in {sys.executable}: install jax with CUDA, or set PYTHON")

if jax.default_backend() != "gpu":
    sys.exit(f"jax backend is {jax.default_backend()!r}, not 'gpu': install jax with CUDA first")
print("devices:", jax.devices())
PY

"$python" scripts/benchmark.py \
    --suite env --suite act --suite update --suite train --suite sweep \
    --num-envs 1 64 1024 4096 16384 65536 \
    --numpy-envs 16 \
    --train-envs 4096 16384 \
    --sweep-members 1 8 64 --sweep-envs 1024 \
    --num-steps 16 --repeats 5 \
    --out "$out"
