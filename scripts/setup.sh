#!/usr/bin/env bash
# Creates .venv (if needed) and installs wd_optax with the pinned dependencies and the given extra.
# Usage: source scripts/setup.sh [extra]   (extra: dev | experiments; default dev)
# Re-running is cheap: the install is skipped while pyproject.toml and the pins are unchanged.
set -euo pipefail
extra="${1:-dev}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
venv="${WD_OPTAX_VENV:-$root/.venv}"

"$python" - <<'PY' || { echo "wd_optax needs Python >= 3.10 (set PYTHON=/path/to/python3.x)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.wd_optax-installed-$extra"
wanted="$(cat "$root/pyproject.toml" "$root/requirements/pins.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "== installing wd_optax[$extra] with pinned dependencies"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c "$root/requirements/pins.txt" -e "$root[$extra]"
  echo "$wanted" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export WD_OPTAX_PYTHON="$venv/bin/python"
