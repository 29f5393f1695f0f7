#!/usr/bin/env bash
# One command for a newcomer and for CI: set everything up, then run the whole test suite.
# The browser test needs Debian's chromium; it is installed here when we are root on a Debian-like system,
# otherwise that test is skipped with its reason. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium: the browser test will be skipped" >&2
fi
# tests/test_runs_slurm.py starts a throw-away single-node Slurm (no accounting) from Debian's slurm-wlm and munge;
# without them (or without root) it is skipped with its reason. The install is bounded so that it cannot hang CI.
if ! command -v slurmctld >/dev/null 2>&1 && [ ! -x /usr/sbin/slurmctld ] && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian slurm-wlm and munge for the Slurm test" >&2
  timeout 600 bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null' \
    || echo "could not install slurm-wlm: the Slurm test will be skipped" >&2
fi
exec .venv/bin/python -m pytest -q "$@"
