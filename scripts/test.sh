#!/usr/bin/env bash
# Install everything the tests need into .venv (created if absent) and run the whole suite,
# on two pytest-xdist workers (whole files per worker: their fixtures are built once), the
# longest files first (tests/conftest.py: LONGEST_FIRST).
# Usage: scripts/test.sh [pytest args...]     e.g. scripts/test.sh -m "not slow"
#        scripts/test.sh -n 0 tests/test_model.py   (one process)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv dev
python -m ruff check .
python -m ruff format --check .
python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"
