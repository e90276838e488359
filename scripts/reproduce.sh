#!/usr/bin/env bash
# The main job, from a fresh machine with only Python: sets up .venv, then runs the quick reproduction
# of every registered study on the bundled data and writes runs/quick/REPORT.md.
# Extra arguments go to `python -m experiments reproduce` (e.g. --seeds 5, or drop --quick via FULL=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh experiments
quick="--quick"
[ "${FULL:-0}" = "1" ] && quick=""
exec "$WD_OPTAX_PYTHON" -m experiments reproduce $quick --workdir "${WORKDIR:-runs/quick}" "$@"
