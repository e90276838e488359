#!/usr/bin/env bash
# Builds the HTML documentation offline, warnings as errors: docs/_build/html/index.html.
# Sets up .venv with the dev extra (which includes the docs extra) first. The results and benchmarks pages
# are generated during the build from runs/quick/REPORT.md and benchmarks/results/latest.json when they
# exist (docs/conf.py runs docs/_generate_results.py and docs/_generate_benchmarks.py); otherwise those
# pages say how to produce them. Extra arguments go to sphinx-build (e.g. -E to rebuild everything).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh dev
exec "$WD_OPTAX_PYTHON" -m sphinx -W --keep-going -b html "$@" docs docs/_build/html
