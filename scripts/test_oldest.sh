#!/usr/bin/env bash
# The library's tests against the OLDEST supported dependencies: requirements/oldest.txt pins each lower
# bound of pyproject.toml (jax, jaxlib, optax, and flax for the [kfac] extra) and the numpy they need.
# Installs wd_optax[kfac] with those pins into its own virtual environment (not .venv: the pinned newest
# versions stay there) and runs the library's test files, the ones that do not import experiments/ (the
# experiment drivers are tested at the pins by scripts/test.sh). Under CI (CI=true) tests marked slow
# are skipped, as in scripts/test.sh.
# Re-running is cheap: the install is skipped while pyproject.toml and requirements/oldest.txt are unchanged.
# Usage: bash scripts/test_oldest.sh [pytest args]   (PYTHON=/path/to/python3.x to choose the interpreter,
#        WD_OPTAX_OLDEST_VENV=dir for the environment, default ${TMPDIR:-/tmp}/wd_optax-oldest-venv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
venv="${WD_OPTAX_OLDEST_VENV:-${TMPDIR:-/tmp}/wd_optax-oldest-venv}"
start=$SECONDS

# The library's test files: none of them imports experiments/, and the documentation build's own tests
# (tests/test_docs_*.py) are left to scripts/test.sh (tests/test_packaging.py checks this list against
# tests/, so a new library test file must be added here).
LIBRARY_TESTS=(
  tests/test_boundary.py
  tests/test_conformance.py
  tests/test_diagnostics_jacobian.py
  tests/test_diagnostics_norms.py
  tests/test_diagnostics_sharpness.py
  tests/test_doctests.py
  tests/test_equilibrium.py
  tests/test_equinox.py
  tests/test_equivalence.py
  tests/test_kfac.py
  tests/test_kfac_batch_space.py
  tests/test_kfac_curvature_period.py
  tests/test_kfac_reference.py
  tests/test_kfac_sharding.py
  tests/test_library_errors.py
  tests/test_linen_haiku.py
  tests/test_modern_decay.py
  tests/test_monitor.py
  tests/test_packaging.py
  tests/test_projections.py
  tests/test_properties.py
  tests/test_rotational.py
  tests/test_schedules_and_masks.py
  tests/test_tuning.py
  tests/test_with_muon.py
)

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.wd_optax-oldest-installed"
wanted="$(cat pyproject.toml requirements/oldest.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "== installing wd_optax[kfac] with the oldest supported dependencies (requirements/oldest.txt)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c requirements/oldest.txt -e ".[kfac]" pytest pytest-xdist hypothesis
  echo "$wanted" > "$stamp"
fi

# The constraints must have been honoured: each pinned package is installed at exactly its pin.
"$venv/bin/python" - requirements/oldest.txt <<'PY'
import importlib.metadata, re, sys
wrong, found = [], []
for line in open(sys.argv[1]):
  line = line.split("#", 1)[0].strip()
  if not line:
    continue
  name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
  installed = importlib.metadata.version(name)
  found.append(f"{name} {installed}")
  if installed != version:
    wrong.append(f"{name}: installed {installed}, requirements/oldest.txt pins {version}")
if wrong:
  sys.exit("oldest-dependency environment does not match its pins:\n  " + "\n  ".join(wrong))
print("== oldest supported set:", ", ".join(found))
PY

args=(-q -p no:cacheprovider -n "${WD_OPTAX_TEST_WORKERS:-2}")
[ "${CI:-}" = "true" ] && args+=(-m "not slow")
status=0
"$venv/bin/python" -m pytest "${args[@]}" "${LIBRARY_TESTS[@]}" "$@" || status=$?
echo "== oldest-dependency library tests finished in $((SECONDS - start)) s (exit $status)"
exit $status
