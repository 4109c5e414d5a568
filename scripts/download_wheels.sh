#!/usr/bin/env bash
# Download, as wheels, the libraries rlli_jax needs beyond a CUDA JAX image, so that the
# benchmark can run on a GPU host that has no network access.
#
#   bash scripts/download_wheels.sh [DEST] [PYTHON_VERSION]     (default: .whl 3.12)
#
# Run it where pip can reach a package index, in the Python environment the project was tested
# in ($PYTHON if set, else python3): each wheel has the version installed there. PYTHON_VERSION is the GPU host's Python
# (major.minor); dm-tree is the only compiled wheel and is taken for that version and
# manylinux x86_64.
#
# The GPU host must already have jax with CUDA (< 0.12) and these: numpy, matplotlib, seaborn,
# tensorstore, pyyaml, tqdm, absl-py, cloudpickle, six, attrs, wrapt, typing-extensions,
# protobuf, packaging, msgpack, rich, treescope, etils, humanize, simplejson, aiofiles. There,
# from the repository root with DEST copied beside it:
#
#   python3 -m pip install --no-index --no-deps --target /tmp/site DEST/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
#   bash scripts/gpu_benchmark.sh OUT_DIR
#
# flax, optax, chex and orbax-checkpoint are downloaded too, although such images often have
# them, so that the GPU run uses the versions the CPU record was measured with.
set -euo pipefail
# A relative DEST, or a relative path in $PYTHON, is resolved against the caller's current
# directory. The default DEST is in the repository root, where the script runs.
dest="${1:-.whl}"
if [[ -n "${1:-}" && "$dest" != /* ]]; then
    dest="$PWD/$dest"
fi
python="${PYTHON:-python3}"
if [[ "$python" == */* && "$python" != /* ]]; then
    python="$PWD/$python"
fi
cd "$(dirname "$0")/.."
python_version="${2:-3.12}"
if ! [[ "$python_version" =~ ^3\.[0-9]+$ ]]; then
    echo "PYTHON_VERSION = '$python_version' is invalid: expected major.minor, such as 3.12" >&2
    exit 2
fi

# Pin each package to the version installed in this Python. Stop if one is missing.
requirements=$("$python" - <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

names = [
    "flax", "optax", "chex", "toolz", "orbax-checkpoint", "distrax", "tfp-nightly", "decorator",
    "gast", "dm-tree", "gymnax", "gymnasium", "farama-notifications", "flashbax", "tensorboardX",
]
missing = []
for name in names:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(
        f"not installed in this Python: {', '.join(missing)}; "
        'run pip install -e ".[test]" first'
    )
PY
)

mkdir -p "$dest"
# shellcheck disable=SC2086  # one argument per requirement
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "$dest" $requirements
echo "wrote $(find "$dest" -name '*.whl' | wc -l) wheels ($(du -sh "$dest" | cut -f1)) to $dest"
