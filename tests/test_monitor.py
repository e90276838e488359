"""The monitor transform: bitwise pass-through, values against numpy, masks, jit, nnx.Optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wd_optax.diagnostics import flatten_by_path
from wd_optax.monitoring import MonitorState, monitor, unpack
from _tol import assert_close_scaled


def _params():
  rng = np.random.default_rng(0)
  return {
      "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "bias": jnp.zeros(3)},
      "head": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
  }


def _loss(params, x):
  h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
  return jnp.mean((h @ params["head"]["kernel"]) ** 2)


def _run(tx, params, steps=3):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4)), jnp.float32)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, x)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  state = tx.init(params)
  history = []
  for _ in range(steps):
    new_params, state, updates = step(params, state)
    history.append((params, updates, new_params, state))
    params = new_params
  return history


def _angle64(a, b):
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if not (a.any() and b.any()):
    return 0.0
  return float(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0)))


def test_monitor_chained_last_leaves_adamw_bitwise_unchanged_and_records_hand_values():
  params = _params()
  reference = _run(optax.adamw(1e-2, weight_decay=0.1), params)
  monitored = _run(optax.chain(optax.adamw(1e-2, weight_decay=0.1), monitor()), params)
  for (_, ref_updates, ref_params, ref_state), (old, updates, new, state) in zip(reference, monitored):
    for a, b in zip(jax.tree.leaves((ref_updates, ref_params, ref_state)),
                    jax.tree.leaves((updates, new, state[0]))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
    record = state[1]
    assert isinstance(record, MonitorState)
    assert optax.tree_utils.tree_get(state, "angular_update") is record.angular_update
    for path, w_old in flatten_by_path(old).items():
      w_new, u = flatten_by_path(new)[path], flatten_by_path(updates)[path]
      # Blocked float32 sums of squares vs float64: round-off of the norm's own scale (a few hundred terms).
      assert_close_scaled(flatten_by_path(record.param_norm)[path],
                          np.linalg.norm(np.asarray(w_new, np.float64)), c=32, err_msg=path)
      assert_close_scaled(flatten_by_path(record.update_norm)[path],
                          np.linalg.norm(np.asarray(u, np.float64)), c=32, err_msg=path)
      # float64 arccos is accurate to ~1e-8 here; the angles are ~1e-2.
      np.testing.assert_allclose(flatten_by_path(record.angular_update)[path],
                                 _angle64(w_old, w_new), rtol=1e-4, atol=1e-6)
  # packed=True stores the same numbers as one vector per field, and also leaves adamw untouched.
  packed = _run(optax.chain(optax.adamw(1e-2, weight_decay=0.1), monitor(packed=True)), params)
  for (_, _, ref_params, _), (_, _, new, state), (_, _, _, per_leaf) in zip(reference, packed, monitored):
    jax.tree.map(np.testing.assert_array_equal, new, ref_params)
    assert state[1].angular_update.shape == (3,)
    for field in MonitorState._fields:
      if getattr(per_leaf[1], field) is None:   # the equilibrium fields, off by default
        assert getattr(state[1], field) is None
        continue
      jax.tree.map(np.testing.assert_array_equal, unpack(getattr(state[1], field), params),
                   getattr(per_leaf[1], field))
  # The zero-initialised bias starts at norm 0: its first angle is 0 by convention, never NaN.
  first_record = monitored[0][3][1]
  assert float(first_record.angular_update["dense"]["bias"]) == 0.0
  assert all(np.isfinite(x) for x in jax.tree.leaves([h[3][1] for h in monitored]))


def test_init_state_and_mask():
  params = _params()
  tx = monitor(mask={"dense": {"kernel": True, "bias": False}, "head": True})
  state = tx.init(params)
  assert state.param_norm["dense"]["bias"] is None and state.angular_update["dense"]["bias"] is None
  assert_close_scaled(state.param_norm["head"]["kernel"],
                      np.linalg.norm(np.asarray(params["head"]["kernel"], np.float64)), c=32)
  assert float(state.update_norm["dense"]["kernel"]) == 0.0
  assert set(flatten_by_path(state.angular_update)) == {"dense/kernel", "head/kernel"}
  updates = jax.tree.map(lambda w: 0.01 * jnp.ones_like(w), params)
  assert tx.update(updates, state, params)[0] is updates  # passed through, not copied
  update = jax.jit(tx.update)
  out, new_state = update(updates, state, params)
  jax.tree.map(np.testing.assert_array_equal, out, updates)
  # Tiny steps: the angle keeps its relative accuracy (arccos of a float32 cosine would give 0).
  tiny = jax.tree.map(lambda w: 1e-6 * jnp.flip(w) + 1e-7, params)
  tiny_angle = update(tiny, state, params)[1].angular_update["head"]["kernel"]
  w = np.asarray(params["head"]["kernel"], np.float64).ravel()
  u = np.asarray(tiny["head"]["kernel"], np.float64).ravel()
  u_perp = u - (u @ w) / (w @ w) * w
  reference = np.arctan2(np.linalg.norm(u_perp), np.linalg.norm(w) + u @ w / np.linalg.norm(w))
  assert 1e-8 < reference < 1e-5
  np.testing.assert_allclose(tiny_angle, reference, rtol=1e-3)
  # The state keeps its structure and dtypes across update, as lax.cond / scan carries require.
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert all(x.dtype == jnp.float32 and x.shape == () for x in jax.tree.leaves(new_state))
  with pytest.raises(ValueError, match="params"):
    tx.update(updates, state, None)
  with pytest.raises(ValueError, match="dense/bias"):
    monitor(mask={"dense": {"kernel": True}, "head": True}).init(params)


def test_monitor_inside_nnx_optimizer_matches_model_weights():
  class Net(nnx.Module):

    def __init__(self, rngs):
      self.hidden = nnx.Linear(3, 4, rngs=rngs)
      self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.out(jax.nn.relu(self.hidden(x)))

  model = Net(nnx.Rngs(0))
  kernels = lambda p: jax.tree_util.tree_map_with_path(lambda path, _: "kernel" in str(path), p)
  optimizer = nnx.Optimizer(model, optax.chain(optax.sgd(0.1), monitor(mask=kernels)), wrt=nnx.Param)
  x = jnp.ones((5, 3))

  @nnx.jit
  def step(model, optimizer):
    old = nnx.as_pure(nnx.state(model, nnx.Param))  # arrays, not the Variables updated below
    grads = nnx.grad(lambda m: 0.1 * jnp.sum(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return old

  old = step(model, optimizer)
  record = optax.tree_utils.tree_get(nnx.as_pure(optimizer.opt_state), "param_norm")
  norms = flatten_by_path(record)
  assert set(norms) == {"hidden/kernel", "out/kernel"}
  assert_close_scaled(norms["hidden/kernel"], np.linalg.norm(np.asarray(model.hidden.kernel[...], np.float64)),
                      c=32)
  angles = flatten_by_path(optax.tree_utils.tree_get(nnx.as_pure(optimizer.opt_state), "angular_update"))
  np.testing.assert_allclose(angles["out/kernel"],
                             _angle64(old["out"]["kernel"], model.out.kernel[...]), rtol=1e-4, atol=1e-6)


# --- names: the transform and its module cannot shadow each other -------------------------------------

def _resolve(dotted: str):
  """The object a documented dotted path names, read as a user would: attribute by attribute from the
  package, importing a submodule only where the attribute is not there yet."""
  import importlib
  parts = dotted.split(".")
  obj = importlib.import_module(parts[0])
  for i, part in enumerate(parts[1:], start=1):
    if not hasattr(obj, part):
      importlib.import_module(".".join(parts[:i + 1]))
    obj = getattr(obj, part)
  return obj


def test_documented_monitor_paths_resolve():
  import wd_optax
  import wd_optax.monitoring  # importing the module must not rebind wd_optax.monitor
  assert wd_optax.monitor is wd_optax.monitoring.monitor
  assert isinstance(wd_optax.monitor(), optax.GradientTransformation)
  assert wd_optax.MonitorState is wd_optax.monitoring.MonitorState
  assert wd_optax.monitoring.unpack is unpack
  for path in ("wd_optax.monitor", "wd_optax.monitoring.unpack", "wd_optax.monitoring.monitor",
               "wd_optax.monitoring.MonitorState", "wd_optax.MonitorState"):
    assert callable(_resolve(path)), path
  # The documented use of unpack, through the attribute path (this raised AttributeError when the
  # module was wd_optax.monitor and the package rebound that name to the function).
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  tx = wd_optax.monitor(mask={"a": True, "b": False}, packed=True)
  state = tx.init(params)
  norms = wd_optax.monitoring.unpack(state.param_norm, params, mask={"a": True, "b": False})
  assert norms["b"] is None
  np.testing.assert_allclose(norms["a"], np.sqrt(3.0), rtol=1e-6)


def test_every_api_page_directive_and_docs_reference_resolves():
  # Sphinx directives in docs/api/*.rst (relative to their currentmodule) and {func}/{mod}/{class}
  # roles in the docs pages: every path they name must resolve, so renames cannot leave dead links.
  import pathlib
  import re
  root = pathlib.Path(__file__).resolve().parents[1]
  names = set()
  for page in sorted((root / "docs" / "api").glob("*.rst")):
    module = None
    for line in page.read_text().splitlines():
      match = re.match(r"\.\. (currentmodule|automodule|autofunction|autoclass|autodata):: (\S+)", line)
      if not match:
        continue
      kind, target = match.groups()
      if kind in ("currentmodule",):
        module = target
      elif kind == "automodule":
        names.add(target)
      else:
        names.add(target if target.startswith("wd_optax") else f"{module}.{target}")
  for page in sorted((root / "docs").rglob("*.md")):
    names.update(re.findall(r"\{(?:func|mod|class|data)\}`~?(wd_optax[\w.]*)`", page.read_text()))
  assert "wd_optax.monitoring.unpack" in names and "wd_optax.monitor" in names
  unresolved = []
  for name in sorted(names):
    try:
      _resolve(name)
    except (ImportError, AttributeError):
      unresolved.append(name)
  assert not unresolved, unresolved
