#!/usr/bin/env bash
# make gpu-check: the GPU path checked for real through `clipfleet run` (bench/gpu_check.py; docs/benchmarks.md,
# "GPU check"). Needs CUDA; without it, says so and exits 0. Arguments go to the driver (--out DIR, --cpu-smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
# The python that has torch: PYTHON if given, else Debian's (this repo's default), else the first on PATH.
if [[ -z "${PYTHON:-}" ]]; then
  if /usr/bin/python3 -c 'import torch' 2>/dev/null; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py "$@"
