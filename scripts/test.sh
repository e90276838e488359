#!/usr/bin/env bash
# The test suite, from a fresh machine with only Python: sets up .venv, then runs pytest.
# Extra arguments go to pytest (e.g. bash scripts/test.sh -k masks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh dev
exec "$WD_OPTAX_PYTHON" -m pytest -q "$@"
