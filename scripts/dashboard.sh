#!/usr/bin/env bash
# One command for a newcomer: set everything up, then open the dashboard on the offline default
# (bundled ImageNet MobileNetV2 + animal silhouettes). Extra arguments go to `streamlit run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamlit run dashboard/app.py "$@"
