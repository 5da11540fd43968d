#!/usr/bin/env bash
# The main job: set up if needed, then analyse every image in input/ into output/.
# Extra arguments go to `face-analysis analyze` (e.g. --detect-size 1024 --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/face-analysis analyze input/ -o output/ "$@"
