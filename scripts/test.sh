#!/usr/bin/env bash
# The test suite, from a fresh machine with only Python: sets up .venv, then runs pytest.
# Under CI (CI=true) tests marked slow are skipped: each is covered by a faster test of the same behaviour.
# Extra arguments go to pytest (e.g. bash scripts/test.sh -k masks, or -m slow for the slow ones).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh dev
# Two workers: the suite is dominated by single-threaded XLA compiles, so it scales with cores (CI has 2).
args=(-q -p no:cacheprovider -n "${WD_OPTAX_TEST_WORKERS:-2}")
[ "${CI:-}" = "true" ] && args+=(-m "not slow")
exec "$WD_OPTAX_PYTHON" -m pytest "${args[@]}" "$@"
