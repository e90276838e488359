#!/usr/bin/env bash
# Checks the release artifact: builds a wheel from this checkout, installs it WITHOUT extras (the core:
# jax, optax, numpy) with the pinned dependencies into a FRESH virtual environment in a temporary
# directory, and, from outside the checkout (so that the installed wheel, not the source tree, is
# imported), checks that flax was not installed, runs the README's first python example (pure optax: it
# needs no flax), checks wd_optax.__version__ against pyproject.toml, that the typing marker py.typed is
# installed and that wd_optax.kfac, without flax, raises ImportError naming the [kfac] extra.
# Needs: python >= 3.10 with venv and network access to PyPI (pip's cache makes reruns fast).
# Usage: bash scripts/check_wheel.sh        (PYTHON=/path/to/python3.x to choose the interpreter)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
start=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/wd_optax-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT

expected_version="$("$python" - "$root/pyproject.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
project = text.split("[project]", 1)[1].split("\n[", 1)[0]
print(re.search(r'^version\s*=\s*"([^"]+)"', project, re.M).group(1))
PY
)"

echo "== building the wheel (wd_optax $expected_version)"
# A copy of the tracked and untracked-but-not-ignored files, so that build byproducts (build/, *.egg-info)
# never land in the checkout and stale ones in it cannot leak into the wheel.
mkdir "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src" 2>/dev/null) \
  || cp -r "$root/." "$work/src"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$work/dist" "$work/src" 2>/dev/null \
  || "$python" -m pip wheel --quiet --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/wd_optax-*.whl)"
echo "   $(basename "$wheel")"

echo "== installing it, without extras, into a fresh virtual environment"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet -c "$root/requirements/pins.txt" "$wheel"

echo "== running the README example against the installed wheel"
"$python" - "$root/README.md" > "$work/readme_example.py" <<'PY'
import re, sys
blocks = re.findall(r"```python\n(.*?)```", open(sys.argv[1]).read(), flags=re.S)
if not blocks:
  sys.exit("README.md has no ```python block")
print(blocks[0])
PY
cat > "$work/check.py" <<PY
import importlib.util, pathlib, sys
assert importlib.util.find_spec("flax") is None, "installing wd_optax without extras installed flax"
import wd_optax
location = pathlib.Path(wd_optax.__file__).resolve()
assert "$work/venv" in str(location), f"imported wd_optax from {location}, not from the installed wheel"
assert wd_optax.__version__ == "$expected_version", (wd_optax.__version__, "$expected_version")
assert (location.parent / "py.typed").is_file(), "py.typed is missing from the installed package"
namespace = {}
exec(compile(open("$work/readme_example.py").read(), "README.md", "exec"), namespace)
assert "params" in namespace, "the README example did not define params"
assert "flax" not in sys.modules, "the core or the README example imported flax"
try:
  import wd_optax.kfac
except ImportError as e:
  assert 'pip install "wd-optax[kfac]"' in str(e), e
else:
  raise AssertionError("wd_optax.kfac imported without flax")
print(f"wd_optax {wd_optax.__version__} from {location.parent}: core without flax, README example ran; "
      "py.typed present; wd_optax.kfac asks for the [kfac] extra")
PY
(cd "$work" && env -u PYTHONPATH JAX_PLATFORMS=cpu "$work/venv/bin/python" "$work/check.py")

echo "== wheel check passed in $((SECONDS - start)) s"
