#!/usr/bin/env bash
# One command for a newcomer: set everything up, then open the dashboard on the offline default
# (bundled ImageNet MobileNetV2 + animal silhouettes). Extra arguments go to `streamlit run` (e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/plasticity dashboard "$@"
