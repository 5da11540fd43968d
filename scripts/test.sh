#!/usr/bin/env bash
# Set up if needed, then lint, type-check and run the whole test suite.
# Extra arguments go to pytest (e.g. tests/unit -k naming).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
.venv/bin/mypy
exec .venv/bin/pytest "$@"
