#!/usr/bin/env bash
# The main job on a fresh machine: install voc-jax (with the converter's torch) into .venv and
# run it. Arguments are passed to scripts/quickstart.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv convert
python scripts/quickstart.py "$@"
