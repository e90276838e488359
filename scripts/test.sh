#!/usr/bin/env bash
# The test suite, from a fresh machine with only Python: sets up .venv, then runs pytest.
# Under CI (CI=true) tests marked slow are skipped: each is covered by a faster test of the same behaviour.
# Extra arguments go to pytest (e.g. bash scripts/test.sh -k masks, or -m slow for the slow ones).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh dev
args=(-q -p no:cacheprovider)
[ "${CI:-}" = "true" ] && args+=(-m "not slow")
exec "$WD_OPTAX_PYTHON" -m pytest "${args[@]}" "$@"
