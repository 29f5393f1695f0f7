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
exec .venv/bin/python -m pytest -q "$@"
