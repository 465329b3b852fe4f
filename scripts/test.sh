#!/usr/bin/env bash
# Runs the test suite on CPU (8 simulated devices in the pytest workers; the CLI runs that tests start get one
# unless a test asks for more: tests/cli_helpers.py), after installing the test and torch extras.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=torch,test bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -n "${PYTEST_WORKERS:-2}" --dist=loadfile --no-loadscope-reorder "$@"
