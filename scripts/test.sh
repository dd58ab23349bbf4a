#!/usr/bin/env bash
# The test suite, exactly as CI runs it:
#   bash scripts/test.sh [pytest arguments]      (bash scripts/test.sh -m extended: the extended tier)
# Uses .venv (made by scripts/quickstart.sh, or made here) with requirements-dev.txt (the
# program's requirements, pytest with xdist and timeout, ruff) installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
export JAX_PLATFORMS=cpu
# -m "not extended": the heaviest repeats stay out of CI's 30 minutes; a later -m wins
# (bash scripts/test.sh -m extended runs them).
exec .venv/bin/python -m pytest -q -n 2 --durations=15 -m "not extended" tests "$@"
