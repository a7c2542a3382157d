#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one run: a Python whose torch is a CUDA build, what hfcf's training needs
# beside it, the gpu-marked tests, then train.py --device cuda at 10M and 25M power-law ratings (bench/scale.py),
# printed as one table. Without a GPU it stops at once with exit 2 (CI runs the CPU half: the same tests skip).
#
#   bash bench/gpu.sh                      # $PYTHON (python3) if its torch sees CUDA, else a CUDA torch from PyPI
#   HFCF_WHEELS=.whl bash bench/gpu.sh     # offline: bench/gpu-requirements.txt's wheels from that folder
#   HFCF_GPU_SIZES="1000000" bash bench/gpu.sh   # other sizes (default: 10M and 25M)
#
# Fetch the wheels on a machine that reaches PyPI, for the GPU machine's Python (3.12 here):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 -d .whl -r bench/gpu-requirements.txt
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1

if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
    echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi failed); the CPU half is CI's: make test" >&2
    exit 2
fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    # PyPI's Linux wheels of torch are CUDA builds; the CPU wheel the Makefile prefers (a local find-links) is not
    "$PY" -m venv .venv-gpu
    PY=.venv-gpu/bin/python
    env -u PIP_FIND_LINKS "$PY" -m pip install --quiet "torch>=2.4"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"

site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
if [ -n "${HFCF_WHEELS:-}" ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$HFCF_WHEELS"/*.whl
else
    "$PY" -m pip install --quiet --no-deps --target "$site" -r bench/gpu-requirements.txt
fi
export PYTHONPATH="$site:$PWD"

echo "== gpu-marked tests"
"$PY" -m pytest -q -ra -p no:cacheprovider -m gpu tests/test_gpu.py

echo "== train.py --device cuda, all three models"
sets=$(mktemp -d)
sizes=${HFCF_GPU_SIZES:-10000000 25000000}
# the sets are generated side by side (numpy, one core each: 25M alone takes minutes), then trained one by one
for size in $sizes; do
    "$PY" -c "import sys; sys.path.insert(0, 'bench'); import scale; from pathlib import Path; scale.generate($size, Path('$sets'))" &
done
wait
"$PY" bench/scale.py --sizes $sizes --keep "$sets" --train-args "--device cuda"
