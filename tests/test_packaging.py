"""Packaging: the core of wd_optax needs only jax, optax and numpy; flax is the ``[kfac]`` extra.

* In a subprocess where ``flax`` cannot be imported (a ``sys.meta_path`` finder raises ``ImportError``
  for it), ``import wd_optax`` works, loads no flax, and the decay transforms, masks, the monitor and
  FixNorm give the values of their update rules written out in numpy.
* There, ``import wd_optax.kfac`` / ``wd_optax.kfac`` raise ``ImportError`` naming the extra to install.
* With flax installed, ``wd_optax.kfac`` is imported on first use only, and is the same module object
  whichever way it is reached.
* Statically: no module outside ``wd_optax/kfac`` imports flax or chex, and pyproject.toml declares
  flax only in the ``kfac`` extra (which ``experiments`` includes) and chex nowhere.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRA_HINT = 'pip install "wd-optax[kfac]"'

BLOCK_FLAX = textwrap.dedent("""\
    import sys

    class _BlockFlax:
      # Behaves as if flax were not installed: any import of flax or a submodule fails.
      def find_spec(self, name, path=None, target=None):
        if name == "flax" or name.startswith("flax."):
          raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/test_packaging.py)", name=name)
        return None

    sys.meta_path.insert(0, _BlockFlax())
    for _name in [m for m in sys.modules if m == "flax" or m.startswith("flax.")]:
      del sys.modules[_name]
    """)


def _run(script: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  env.setdefault("JAX_PLATFORMS", "cpu")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr}"
  return result


def test_core_works_without_flax():
  script = BLOCK_FLAX + textwrap.dedent("""\
      import math
      import numpy as np
      import jax.numpy as jnp
      import optax
      import wd_optax

      w = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
      b = np.array([0.25, -1.0], np.float32)
      gw = np.array([[0.1, 0.2], [-0.3, 0.4]], np.float32)
      gb = np.array([1.0, 2.0], np.float32)
      params = {"dense": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
      grads = {"dense": {"kernel": jnp.asarray(gw), "bias": jnp.asarray(gb)}}
      lr, lam = 0.5, 0.1

      # masks: kernels() selects the 2-D leaf only.
      mask = wd_optax.masks.kernels()(params)
      assert mask == {"dense": {"kernel": True, "bias": False}}, mask

      # coupled L2 + SGD: u = -lr (g + lam w) on masked leaves, -lr g elsewhere.
      tx = optax.chain(wd_optax.add_l2(lam, mask=wd_optax.masks.kernels()), optax.sgd(lr))
      u, _ = tx.update(grads, tx.init(params), params)
      np.testing.assert_allclose(u["dense"]["kernel"], -lr * (gw + lam * w), rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(u["dense"]["bias"], -lr * gb, rtol=1e-6, atol=1e-7)

      # decoupled decay, coupling "lr": u = -lr g - lr lam w.
      tx = optax.chain(optax.sgd(lr), wd_optax.decoupled_decay(lam, learning_rate=lr))
      u, _ = tx.update(grads, tx.init(params), params)
      np.testing.assert_allclose(u["dense"]["kernel"], -lr * gw - lr * lam * w, rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(u["dense"]["bias"], -lr * gb - lr * lam * b, rtol=1e-6, atol=1e-7)

      # monitor: w = (1, 0), u = (0, -1): angle pi/4, |w + u| = sqrt 2.
      tx = optax.chain(optax.sgd(1.0), wd_optax.monitor())
      p = {"w": jnp.array([1.0, 0.0])}
      _, state = tx.update({"w": jnp.array([0.0, 1.0])}, tx.init(p), p)
      assert abs(float(optax.tree_utils.tree_get(state, "angular_update")["w"]) - math.pi / 4) < 1e-6
      assert abs(float(optax.tree_utils.tree_get(state, "param_norm")["w"]) - math.sqrt(2)) < 1e-6

      # fix_norm (target = the norm at init): w + u lands on the sphere of radius |w_0|.
      tx = optax.chain(optax.sgd(lr), wd_optax.fix_norm(mask=wd_optax.masks.kernels()))
      u, _ = tx.update(grads, tx.init(params), params)
      new = optax.apply_updates(params, u)
      assert abs(float(np.linalg.norm(new["dense"]["kernel"])) / np.linalg.norm(w) - 1) < 1e-6
      np.testing.assert_allclose(u["dense"]["bias"], -lr * gb, rtol=1e-6, atol=1e-7)

      # the optimizers and schedules
      tx = wd_optax.adam(1e-3, weight_decay=lam)
      tx.update(grads, tx.init(params), params)
      wd_optax.schedules

      loaded = sorted(m for m in sys.modules if m == "flax" or m.startswith("flax."))
      assert not loaded, loaded
      assert "wd_optax.kfac" not in sys.modules
      print("core ok from", wd_optax.__file__)
      """)
  out = _run(script).stdout
  assert f"core ok from {ROOT / 'wd_optax' / '__init__.py'}" in out, out


@pytest.mark.parametrize("how", ["import wd_optax.kfac", "from wd_optax import kfac",
                                 "import wd_optax; wd_optax.kfac.scale_by_kfac"])
def test_kfac_without_flax_names_the_extra(how):
  script = BLOCK_FLAX + textwrap.dedent(f"""\
      try:
        {how}
      except ImportError as e:
        print("ImportError:", e)
      else:
        raise SystemExit("no ImportError")
      """)
  out = _run(script).stdout
  assert "ImportError: wd_optax.kfac needs flax" in out, out
  assert EXTRA_HINT in out, out


def test_kfac_is_imported_lazily():
  if importlib.util.find_spec("flax") is None:
    pytest.skip("flax is not installed (the [kfac] extra)")
  script = textwrap.dedent("""\
      import sys
      import wd_optax
      assert "wd_optax.kfac" not in sys.modules
      assert not [m for m in sys.modules if m == "flax" or m.startswith("flax.")]
      assert "kfac" in dir(wd_optax)
      scale_by_kfac = wd_optax.kfac.scale_by_kfac
      assert callable(scale_by_kfac)
      module = sys.modules["wd_optax.kfac"]
      assert wd_optax.kfac is module
      import wd_optax.kfac
      from wd_optax import kfac
      from wd_optax.kfac import Linear
      assert kfac is module and wd_optax.kfac is module and Linear is module.Linear
      try:
        wd_optax.no_such_thing
      except AttributeError as e:
        assert "no_such_thing" in str(e), e
      else:
        raise SystemExit("no AttributeError")
      print("lazy ok")
      """)
  assert "lazy ok" in _run(script).stdout


def _module_imports(path: pathlib.Path) -> set[str]:
  """Top-level package names imported anywhere in a module (import statements, not strings)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
  return names


def test_only_kfac_imports_flax_and_nothing_imports_chex():
  package = ROOT / "wd_optax"
  offenders = {}
  for path in sorted(package.rglob("*.py")):
    relative = path.relative_to(package)
    forbidden = {"chex"} if relative.parts[0] == "kfac" else {"flax", "chex"}
    found = _module_imports(path) & forbidden
    if found:
      offenders[str(relative)] = sorted(found)
  assert not offenders, f"modules importing optional or undeclared packages: {offenders}"


def test_pyproject_declares_flax_only_in_the_kfac_extra():
  tomllib = pytest.importorskip("tomllib")
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

  def names(requirements):
    return {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].split("!")[0]
            .split("~")[0].strip().lower() for r in requirements}

  core = names(project["dependencies"])
  extras = project["optional-dependencies"]
  assert {"jax", "jaxlib", "optax", "numpy"} <= core, core
  assert not core & {"flax", "chex"}, core
  assert "flax" in names(extras["kfac"]), extras["kfac"]
  assert any("wd-optax[" in r and "kfac" in r for r in extras["experiments"]), extras["experiments"]
  assert any("wd-optax[" in r and "experiments" in r for r in extras["dev"]), extras["dev"]
  assert all("chex" not in names(reqs) for reqs in extras.values()), extras


def test_oldest_script_runs_every_library_test_file_and_no_experiments_test():
  """scripts/test_oldest.sh lists exactly the test files that do not import experiments/."""
  script = (ROOT / "scripts" / "test_oldest.sh").read_text()
  listed = set(re.findall(r"^\s+(tests/test_\w+\.py)$", script, re.M))
  imports_experiments = re.compile(r"^\s*(from|import)\s+experiments\b", re.M)
  # tests/test_docs_*.py test the documentation build (its toolchain is the docs extra), not the library.
  library = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")
             if not imports_experiments.search(p.read_text()) and not p.name.startswith("test_docs_")}
  assert listed == library, (f"in scripts/test_oldest.sh but importing experiments (or missing): "
                             f"{sorted(listed - library)}; library test files not in it: {sorted(library - listed)}")
  # tests/conftest.py is loaded for every run: at module level it imports neither experiments nor flax.
  tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
  top_level = set()
  for node in tree.body:
    if isinstance(node, ast.Import):
      top_level.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      top_level.add(node.module.split(".")[0])
  assert not top_level & {"experiments", "flax"}, top_level
