"""One conformance suite over every transform and optimizer of the foundation.

Each entry is a factory and its keyword arguments; every test runs over all entries: jit without
recompilation, inside ``optax.inject_hyperparams``, dtype preservation, state shapes stable under
``lax.cond``, schedules for every rate, and ``nnx.Optimizer`` on a small NNX model.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import wd_optax
from _tol import assert_close_scaled


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict
  rate_args: tuple[str, ...]   # the ScalarOrSchedule arguments
  lr_scaled: bool = True       # False for a direction-only transform: chain a learning rate in tests

  def make(self, **overrides) -> optax.GradientTransformation:
    return self.factory(**{**self.kwargs, **overrides})


KERNELS = wd_optax.masks.kernels()
ENTRIES = [
    Entry("add_l2", wd_optax.add_l2, dict(weight_decay=0.1, mask=KERNELS), ("weight_decay",), False),
    *[Entry(f"decoupled_decay[{c}]", wd_optax.decoupled_decay,
            dict(weight_decay=0.1, coupling=c, learning_rate=0.05, mask=KERNELS),
            ("weight_decay", "learning_rate"), False) for c in wd_optax.COUPLINGS],
    Entry("scale_by_adam_l2", wd_optax.scale_by_adam_l2, dict(weight_decay=0.1, mask=KERNELS),
          ("weight_decay",), False),
    Entry("scale_by_adam_l2[outside]", wd_optax.scale_by_adam_l2,
          dict(weight_decay=0.1, l2_in_first_moment=False, l2_preconditioned=True),
          ("weight_decay",), False),
    Entry("sgd[l2]", wd_optax.sgd, dict(learning_rate=0.05, weight_decay=0.1, decay="l2", mask=KERNELS),
          ("learning_rate", "weight_decay")),
    Entry("sgd[decoupled]", wd_optax.sgd,
          dict(learning_rate=0.05, weight_decay=0.1, decay="decoupled", mask=KERNELS),
          ("learning_rate", "weight_decay")),
    *[Entry(f"adam[{d}]", wd_optax.adam, dict(learning_rate=1e-2, weight_decay=0.1, decay=d, mask=KERNELS),
            ("learning_rate", "weight_decay")) for d in wd_optax.optimizers.ADAM_DECAYS],
    *[Entry(f"decoupled_decay[{c}, cautious]", wd_optax.decoupled_decay,
            dict(weight_decay=0.1, coupling=c, learning_rate=0.05, mask=KERNELS, cautious=True),
            ("weight_decay", "learning_rate"), False) for c in wd_optax.COUPLINGS],
    Entry("sgd[decoupled, cautious]", wd_optax.sgd,
          dict(learning_rate=0.05, weight_decay=0.1, decay="decoupled", mask=KERNELS, cautious=True),
          ("learning_rate", "weight_decay")),
    Entry("adam[decoupled, cautious]", wd_optax.adam,
          dict(learning_rate=1e-2, weight_decay=0.1, mask=KERNELS, cautious=True), ("learning_rate", "weight_decay")),
    # delta=1: a threshold that the test's gradients cross, so both branches of the projection run.
    Entry("adamp", wd_optax.adamp, dict(learning_rate=1e-2, weight_decay=0.1, delta=1.0, mask=KERNELS),
          ("learning_rate", "weight_decay")),
    Entry("sgdp", wd_optax.sgdp, dict(learning_rate=0.05, weight_decay=0.1, delta=1.0, mask=KERNELS),
          ("learning_rate", "weight_decay")),
    Entry("adams", wd_optax.adams, dict(learning_rate=1e-2, weight_decay=0.1, mask=KERNELS),
          ("learning_rate", "weight_decay")),
    Entry("sgds", wd_optax.sgds, dict(learning_rate=0.05, weight_decay=0.1, mask=KERNELS),
          ("learning_rate", "weight_decay")),
]
IDS = [e.name for e in ENTRIES]


def _full(entry: Entry, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """A complete optimizer: direction-only transforms get a momentum step and a learning rate."""
  if entry.lr_scaled:
    return tx
  if entry.factory is wd_optax.decoupled_decay:
    return optax.chain(optax.scale_by_learning_rate(0.05), tx)
  return optax.chain(tx, optax.scale_by_learning_rate(0.05))


def _params(dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"dense": {"kernel": jax.random.normal(k1, (5, 3), dtype), "bias": jnp.ones((3,), dtype)},
          "scale": jax.random.normal(k2, (3,), dtype)}


def _grads(params, step):
  return jax.tree.map(lambda p: jnp.sin(p * (step + 1)).astype(p.dtype), params)


def _run(tx, params, steps=3):
  state = tx.init(params)
  for t in range(steps):
    updates, state = tx.update(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_jit_compiles_once(entry):
  tx = _full(entry, entry.make())
  traces = []

  @jax.jit
  def step(params, state, t):
    traces.append(1)
    updates, state = tx.update(_grads(params, t), state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  for t in range(3):
    params, state = step(params, state, jnp.asarray(t, jnp.float32))
  assert len(traces) == 1
  eager, _ = _run(tx, _params(), steps=3)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(eager)):
    assert_close_scaled(a, b, c=100)   # two programs, 3 steps: float32 round-off of the params' scale


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_inject_hyperparams_matches_plain_and_exposes_rates(entry):
  static = tuple(k for k in ("mask",) if k in entry.kwargs)
  injected = optax.inject_hyperparams(entry.factory, static_args=static)(**entry.kwargs)
  plain_params, _ = _run(_full(entry, entry.make()), _params())
  inj_params, inj_state = _run(_full(entry, injected), _params())
  for a, b in zip(jax.tree.leaves(inj_params), jax.tree.leaves(plain_params)):
    assert_close_scaled(a, b, c=100)   # two programs, 3 steps: float32 round-off of the params' scale
  hyperparams = optax.tree_utils.tree_get(inj_state, "hyperparams")
  for rate in entry.rate_args:
    assert float(hyperparams[rate]) == pytest.approx(entry.kwargs[rate])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_keeps_param_dtype(entry, dtype):
  tx = _full(entry, entry.make())
  params = _params(dtype)
  state = tx.init(params)
  state_dtypes = jax.tree.map(lambda x: x.dtype, state)
  for t in range(2):
    updates, state = tx.update(_grads(params, t), state, params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.dtype == p.dtype
    assert jax.tree.map(lambda x: x.dtype, state) == state_dtypes
    params = optax.apply_updates(params, updates)
  assert all(p.dtype == dtype for p in jax.tree.leaves(params))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_state_shapes_stable_under_cond(entry):
  tx = _full(entry, entry.make())
  params = _params()
  state = tx.init(params)

  @jax.jit
  def maybe_update(state, take_step):
    return jax.lax.cond(take_step, lambda s: tx.update(_grads(params, 0), s, params)[1], lambda s: s, state)

  stepped = maybe_update(state, True)
  skipped = maybe_update(state, False)
  assert jax.tree.structure(stepped) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(skipped), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_accepts_schedules_for_every_rate(entry):
  # A constant schedule must give the same steps as the constant; a decaying one must differ.
  # Couplings that divide by the peak learning rate need it given once the learning rate is a schedule.
  needs_peak = entry.kwargs.get("coupling") in ("schedule", "corrected") and "learning_rate" in entry.rate_args
  extra = {"peak_learning_rate": entry.kwargs["learning_rate"]} if needs_peak else {}
  as_constant_schedules = {k: optax.constant_schedule(entry.kwargs[k]) for k in entry.rate_args}
  plain, _ = _run(_full(entry, entry.make()), _params())
  scheduled, state = _run(_full(entry, entry.make(**as_constant_schedules, **extra)), _params())
  for a, b in zip(jax.tree.leaves(scheduled), jax.tree.leaves(plain)):
    assert_close_scaled(a, b, c=16)   # a constant schedule traced in place of the constant
  decaying = {k: optax.linear_schedule(entry.kwargs[k], 0.0, 3) for k in entry.rate_args}
  changed, _ = _run(_full(entry, entry.make(**decaying, **extra)), _params())
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(changed), jax.tree.leaves(plain)))


class TinyNet(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 8, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs)
    self.classifier = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.classifier(nnx.relu(self.norm(self.hidden(x))))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_works_with_nnx_optimizer(entry):
  # nnx.Optimizer (Variables at init, pure States at update) must take the same steps as the same
  # transform run on the model's parameters as a plain nested dict.
  x = jax.random.normal(jax.random.key(1), (16, 4))
  y = jnp.arange(16) % 3

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  model = TinyNet(nnx.Rngs(0))
  graphdef, start_params, rest = nnx.split(model, nnx.Param, ...)
  start_params = nnx.as_pure(start_params)  # arrays: immune to the in-place training below
  tx = _full(entry, entry.make())
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for _ in range(3):
    train_step(model, optimizer)

  def dict_loss(p):
    return loss_fn(nnx.merge(graphdef, p, rest))

  dict_grad = jax.jit(jax.grad(dict_loss))
  params = start_params
  state = tx.init(params)
  for _ in range(3):
    grads = dict_grad(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params)):
    assert_close_scaled(a, b, c=100)   # two programs, 3 steps: float32 round-off of the params' scale


# --- optax.tree.map_params over every public factory ------------------------------------------------
#
# map_params(tx, fn, state) calls tx.init on a leafless stand-in for the params and applies fn to the
# parts of the state that init built by mapping over it. These cases cover every public factory of the
# library (test_map_params_cases_cover_every_public_factory finds them), each with masks given as trees
# (what used to fail: init validated the mask against the stand-in) and as callables.

PARAM_MASK = {"dense": {"kernel": True, "bias": False}, "scale": False}
NOT_KERNEL = {"dense": {"kernel": False, "bias": True}, "scale": False}


@dataclasses.dataclass(frozen=True)
class MapCase:
  name: str
  factory: Callable[..., Any]
  kwargs: dict
  # Entries whose structure depends on the params without mirroring them (per-leaf norms, measurements,
  # per-layer dicts without ``layers``): map_params hands each to transform_non_params whole.
  whole_non_param_entries: bool = False


_SCHEDULE = optax.linear_schedule(0.1, 0.0, 10)
MAP_CASES = [
    MapCase("add_l2[mask tree]", wd_optax.add_l2, dict(weight_decay=0.1, mask=PARAM_MASK)),
    MapCase("add_l2[schedule, callable mask]", wd_optax.add_l2, dict(weight_decay=_SCHEDULE, mask=KERNELS)),
    *[MapCase(f"decoupled_decay[{c}]", wd_optax.decoupled_decay,
              dict(weight_decay=0.1, coupling=c, learning_rate=_SCHEDULE, peak_learning_rate=0.1,
                   mask=PARAM_MASK)) for c in wd_optax.COUPLINGS],
    MapCase("scale_by_adam_l2[mask tree]", wd_optax.scale_by_adam_l2, dict(weight_decay=0.1, mask=PARAM_MASK)),
    MapCase("scale_by_adam_l2[outside, floor]", wd_optax.scale_by_adam_l2,
            dict(weight_decay=0.1, l2_in_first_moment=False, l2_in_second_moment=False,
                 l2_preconditioned=True, preconditioner_floor=1e-3, mask=KERNELS)),
    MapCase("sgd[l2]", wd_optax.sgd, dict(learning_rate=0.1, weight_decay=0.1, decay="l2", mask=PARAM_MASK)),
    MapCase("sgd[decoupled, no momentum]", wd_optax.sgd,
            dict(learning_rate=_SCHEDULE, momentum=None, weight_decay=0.1, decay="decoupled",
                 coupling="schedule", peak_learning_rate=0.1, mask=PARAM_MASK)),
    *[MapCase(f"adam[{d}]", wd_optax.adam, dict(learning_rate=1e-2, weight_decay=0.1, decay=d, mask=PARAM_MASK))
      for d in wd_optax.optimizers.ADAM_DECAYS],
    MapCase("fix_norm[init]", wd_optax.fix_norm, dict(target="init", mask=PARAM_MASK), True),
    MapCase("fix_norm[init, per_channel]", wd_optax.fix_norm, dict(per_channel=True, mask=KERNELS), True),
    MapCase("fix_norm[float]", wd_optax.fix_norm, dict(target=2.0, mask=PARAM_MASK)),
    MapCase("fix_norm[tree]", wd_optax.fix_norm, dict(target={"dense": 2.0, "scale": 1.0})),
    MapCase("fixnorm", wd_optax.fixnorm,
            dict(learning_rate=0.1, classifier_norm=1.0, classifier_mask=NOT_KERNEL,
                 scale_invariant_mask=PARAM_MASK), True),
    MapCase("fixnorm[no momentum]", wd_optax.fixnorm,
            dict(learning_rate=0.1, momentum=None, classifier_norm=1.0, classifier_mask=NOT_KERNEL,
                 scale_invariant_mask=PARAM_MASK), True),
    MapCase("monitor[mask tree]", wd_optax.monitor, dict(mask=PARAM_MASK), True),
    MapCase("monitor[all]", wd_optax.monitor, dict(), True),
    MapCase("monitor[packed]", wd_optax.monitor, dict(mask=PARAM_MASK, packed=True)),
    MapCase("kfac[decoupled]", wd_optax.kfac.kfac,
            dict(learning_rate=0.1, damping=1e-3, weight_decay=0.1, layers=["dense"], mask=PARAM_MASK)),
    MapCase("kfac[l2, kl_clip]", wd_optax.kfac.kfac,
            dict(learning_rate=0.1, damping=1e-3, weight_decay=0.1, decay="l2", kl_clip=1e-3,
                 layers=["dense"], mask=KERNELS)),
    MapCase("scale_by_kfac[layers]", wd_optax.kfac.scale_by_kfac, dict(damping=1e-3, layers=["dense"])),
    *[MapCase(f"decoupled_decay[{c}, cautious]", wd_optax.decoupled_decay,
              dict(weight_decay=0.1, coupling=c, learning_rate=_SCHEDULE, peak_learning_rate=0.1,
                   mask=PARAM_MASK, cautious=True)) for c in ("lr", "independent")],
    MapCase("radial_projection", wd_optax.projections.radial_projection,
            dict(direction=optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(0.1)),
                 decay=wd_optax.decoupled_decay(0.1, learning_rate=0.1, mask=PARAM_MASK), mask=KERNELS)),
    MapCase("adamp", wd_optax.adamp, dict(learning_rate=_SCHEDULE, weight_decay=0.1, mask=PARAM_MASK,
                                          projection_mask=KERNELS)),
    MapCase("sgdp", wd_optax.sgdp, dict(learning_rate=0.1, weight_decay=_SCHEDULE, mask=PARAM_MASK)),
    MapCase("adams", wd_optax.adams, dict(learning_rate=_SCHEDULE, weight_decay=0.1, mask=PARAM_MASK)),
    MapCase("sgds", wd_optax.sgds, dict(learning_rate=0.1, weight_decay=_SCHEDULE, mask=KERNELS)),
    MapCase("inject_hyperparams(adam)", optax.inject_hyperparams(wd_optax.adam, static_args=("mask",)),
            dict(learning_rate=1e-2, b1=0.9, weight_decay=0.1, mask=PARAM_MASK)),
]
MAP_IDS = [c.name for c in MAP_CASES]


def _public_factories() -> dict[str, Callable[..., Any]]:
  """Every public function of wd_optax (any public module) that returns a gradient transformation."""
  import importlib
  import inspect
  import pkgutil
  modules = [wd_optax] + [importlib.import_module(info.name) for info in
                          pkgutil.walk_packages(wd_optax.__path__, prefix="wd_optax.")
                          if not any(part.startswith("_") for part in info.name.split("."))]
  found = {}
  for module in modules:
    for name in getattr(module, "__all__", []):
      obj = getattr(module, name)
      if inspect.isfunction(obj) and "GradientTransformation" in str(inspect.signature(obj).return_annotation):
        found[f"{obj.__module__}.{obj.__qualname__}"] = obj
  return found


def test_map_params_cases_cover_every_public_factory():
  factories = _public_factories()
  assert len(factories) >= 10, sorted(factories)
  covered = {id(c.factory) for c in MAP_CASES}
  missing = sorted(name for name, f in factories.items() if id(f) not in covered)
  assert not missing, f"public factories without a map_params case: {missing}"


class _Mapped:
  """What fn returns in the test: a leaf recording the shape of the array it was given."""

  def __init__(self, shape):
    self.shape = shape


def _param_shaped_subtrees(state, params) -> list[tuple]:
  """Key paths of the parts of ``state`` laid out exactly like ``params`` (same tree, same leaf shapes)."""
  treedef = jax.tree.structure(params)
  shapes = [np.shape(x) for x in jax.tree.leaves(params)]
  found = []

  def visit(path, node):
    if jax.tree.structure(node) == treedef and [np.shape(x) for x in jax.tree.leaves(node)] == shapes:
      found.append(path)
      return
    children, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(children) == 1 and children[0][1] is node:
      return  # a leaf
    for key_path, child in children:
      visit(path + key_path, child)

  visit((), state)
  return found


def _under(path, prefixes) -> bool:
  return any(path[:len(p)] == p for p in prefixes)


def _map_case_state(case: MapCase):
  tx = case.factory(**case.kwargs)
  params = _params()
  return tx, params, tx.init(params)


@pytest.mark.parametrize("case", MAP_CASES, ids=MAP_IDS)
def test_map_params_applies_fn_to_the_param_shaped_parts_only(case):
  tx, params, state = _map_case_state(case)
  mirrors = _param_shaped_subtrees(state, params)
  mapped = optax.tree.map_params(tx, lambda x: _Mapped(np.shape(x)), state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  for (path, got), (_, original) in zip(jax.tree_util.tree_flatten_with_path(mapped)[0],
                                        jax.tree_util.tree_flatten_with_path(state)[0]):
    if _under(path, mirrors):
      assert isinstance(got, _Mapped) and got.shape == np.shape(original), jax.tree_util.keystr(path)
    else:
      assert got is original, jax.tree_util.keystr(path)
  # The momentum and moment buffers are found as param-shaped, so the check above is not vacuous.
  expected_buffers = {"sgd[l2]": 1, "adam[decoupled]": 2, "adamp": 2, "sgdp": 1, "adams": 2, "sgds": 1, "scale_by_adam_l2[mask tree]": 2, "fixnorm": 1,
                      "kfac[decoupled]": 1, "inject_hyperparams(adam)": 2}
  if case.name in expected_buffers:
    assert len(mirrors) == expected_buffers[case.name], mirrors


@pytest.mark.parametrize("case", MAP_CASES, ids=MAP_IDS)
def test_map_params_builds_sharding_like_specs(case):
  # The use map_params exists for: a spec per parameter, mapped onto the state; everything else gets
  # transform_non_params. The result is the state's structure or (for entries that do not mirror the
  # params, documented) a prefix of it, which jax's sharding arguments accept.
  tx, params, state = _map_case_state(case)
  specs = wd_optax._tree.map_with_path(lambda path, _: f"spec:{path}", params)
  out = optax.tree.map_params(tx, lambda _, spec: spec, state, specs,
                              transform_non_params=lambda _: "replicated")
  if not case.whole_non_param_entries:
    assert jax.tree.structure(out) == jax.tree.structure(state)
  full = jax.tree.broadcast(out, state)
  mirrors = _param_shaped_subtrees(state, params)
  param_paths = [p for p, _ in wd_optax._tree.named_leaves(params)]
  for path, got in jax.tree_util.tree_flatten_with_path(full)[0]:
    prefix = [p for p in mirrors if path[:len(p)] == p]
    if prefix:
      leaf_path = wd_optax._tree.path_str(path[len(prefix[0]):])
      assert leaf_path in param_paths and got == f"spec:{leaf_path}", jax.tree_util.keystr(path)
    else:
      assert got == "replicated", jax.tree_util.keystr(path)


def test_map_params_with_nnx_state_params():
  # Params as nnx.Optimizer hands them to update (the pure nnx.State of a model), mask by regex.
  model = TinyNet(nnx.Rngs(0))
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  tx = wd_optax.sgd(0.1, weight_decay=0.1, mask=wd_optax.masks.exclude("bias$", "scale$"))
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda x: _Mapped(np.shape(x)), state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  shapes = [x.shape for x in jax.tree.leaves(mapped) if isinstance(x, _Mapped)]
  assert shapes == [np.shape(x) for x in jax.tree.leaves(params)]  # the momentum buffer, leaf by leaf


def test_map_params_scale_by_kfac_reading_layers_from_nnx_metadata():
  # layers=None: init reads the registered layers from the Variables' metadata, which map_params's
  # stand-in does not have; the per-layer dicts then come back whole (kept, or given to
  # transform_non_params once each).
  model = wd_optax.kfac.Linear(3, 2, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  tx = optax.chain(wd_optax.kfac.scale_by_kfac(1e-3), optax.trace(0.9))
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda x: _Mapped(np.shape(x)), state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  assert [x.shape for x in jax.tree.leaves(mapped) if isinstance(x, _Mapped)] == [
      np.shape(x) for x in jax.tree.leaves(params)]  # the momentum buffer only
  out = optax.tree.map_params(tx, lambda x: "spec", state, transform_non_params=lambda _: "replicated")
  kfac_out = out[0]
  assert kfac_out.factors == "replicated" and kfac_out.count == "replicated"
  assert jax.tree.leaves(jax.tree.broadcast(out, state)) == (
      ["replicated"] * len(jax.tree.leaves(state[0])) + ["spec"] * len(jax.tree.leaves(params)))
