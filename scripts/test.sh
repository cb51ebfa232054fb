#!/usr/bin/env bash
# Install everything the tests need into .venv (created if absent) and run the whole suite.
# Usage: scripts/test.sh [pytest args...]     e.g. scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv dev
python -m ruff check .
python -m ruff format --check .
python -m pytest -q "$@"
