#!/usr/bin/env bash
# Every GPU figure in one command, one markdown table in benchmarks/results/gpu-<date>.md (see gpu_report.py).
#   bash benchmarks/gpu.sh                       # on a machine with CUDA (about 5-8 minutes on one H100)
#   bash benchmarks/gpu.sh --device cpu --quick  # check the script on a CPU at tiny sizes (numbers mean nothing)
# Needs nothing from the network: timm models with random init, the bundled MobileNetV2 and data set from the
# offline asset cache (`plasticity assets fetch` once). Exits 2 with a message when no CUDA device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_report.py "$@"
