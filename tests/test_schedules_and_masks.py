"""Schedules against plain Python references; masks against the expected paths on NNX models and dicts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wd_optax
from wd_optax import masks, schedules
from _tol import assert_close_scaled

# ---------------------------------------------------------------- schedules


def _early_reference(t, value, until, ramp):
  if t < until:
    return value
  if ramp == 0 or t >= until + ramp:
    return 0.0
  return value * (1 - (t - until) / ramp)


def _late_reference(t, value, start, ramp):
  if t < start:
    return 0.0
  if ramp == 0 or t >= start + ramp:
    return value
  return value * (t - start) / ramp


@pytest.mark.parametrize("ramp", [0, 1, 7])
def test_early_and_late_match_python_reference(ramp):
  steps = np.arange(0, 60)
  early = jax.vmap(schedules.early(0.3, 20, ramp_steps=ramp))(steps)
  late = jax.vmap(schedules.late(0.3, 20, ramp_steps=ramp))(steps)
  assert_close_scaled(early, [_early_reference(t, 0.3, 20, ramp) for t in steps], c=16)   # vmapped vs float64
  assert_close_scaled(late, [_late_reference(t, 0.3, 20, ramp) for t in steps], c=16)


def test_window_matches_python_reference():
  steps = np.arange(0, 40)
  got = jax.vmap(schedules.window(2.0, 5, 17))(steps)
  np.testing.assert_array_equal(got, [2.0 if 5 <= t < 17 else 0.0 for t in steps])


def test_schedules_compose_with_optax_schedules():
  import optax
  base = optax.linear_schedule(1.0, 0.0, 100)
  composed = schedules.early(base, 50)
  for t in (0, 10, 49, 50, 80):
    expected = (1.0 - t / 100) if t < 50 else 0.0
    assert float(composed(t)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("factory,args", [
    (schedules.early, (0.1, -1)), (schedules.late, (0.1, 2.5)), (schedules.window, (0.1, 5, 2)),
    (schedules.early, (-0.1, 10)), (schedules.early, (float("nan"), 10)),
])
def test_schedules_reject_bad_arguments(factory, args):
  with pytest.raises((ValueError, TypeError)):
    factory(*args)


def test_ramp_steps_must_be_non_negative():
  with pytest.raises(ValueError, match="ramp_steps"):
    schedules.early(0.1, 10, ramp_steps=-2)


# Traced step edges: a numpy reference of the gate, written from the formulas (not from our code), against
# the schedules made inside jit / vmap with array edges (one per member).

def _np_window(t, start, end):
  t = np.asarray(t)[None, :]
  return ((t >= np.asarray(start)[:, None]) & (t < np.asarray(end)[:, None])).astype(np.float64)


def _np_early(t, until, ramp):
  t, until = np.asarray(t, np.float64)[None, :], np.asarray(until, np.float64)[:, None]
  if ramp == 0:
    return (t < until).astype(np.float64)
  return np.clip(1.0 - (t - until) / ramp, 0.0, 1.0)


_STARTS = np.array([0, 0, 10, 25, 7, 40], np.int32)
_ENDS = np.array([40, 10, 20, 40, 7, 45], np.int32)   # (7, 7): empty window; (40, 45) past the end


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.float32])
def test_window_with_vmapped_edges_matches_numpy_reference(dtype):
  steps = jnp.arange(0, 50)
  per_member = jax.jit(jax.vmap(lambda t0, t1: jax.vmap(schedules.window(0.5, t0, t1))(steps)))
  got = per_member(jnp.asarray(_STARTS, dtype), jnp.asarray(_ENDS, dtype))
  # A 0/1 gate times 0.5 is exact in float32: compared exactly.
  np.testing.assert_array_equal(np.asarray(got), 0.5 * _np_window(np.arange(50), _STARTS, _ENDS))


@pytest.mark.parametrize("ramp", [0, 1, 7])
def test_early_and_late_with_vmapped_edges_match_numpy_reference(ramp):
  steps = np.arange(0, 60)
  edges = jnp.asarray([0, 3, 20, 55], jnp.int32)
  early = jax.jit(jax.vmap(lambda e: jax.vmap(schedules.early(0.3, e, ramp_steps=ramp))(jnp.asarray(steps))))(edges)
  late = jax.jit(jax.vmap(lambda e: jax.vmap(schedules.late(0.3, e, ramp_steps=ramp))(jnp.asarray(steps))))(edges)
  reference = _np_early(steps, np.asarray(edges), ramp)
  assert_close_scaled(early, 0.3 * reference, c=16)        # jitted float32 vs float64 reference
  assert_close_scaled(late, 0.3 * (1.0 - reference), c=16)


def test_array_edges_give_the_same_schedule_as_int_edges():
  steps = jnp.arange(0, 50)
  for t0, t1 in [(0, 40), (10, 20), (7, 7)]:
    by_int = jax.vmap(schedules.window(1e-3, t0, t1))(steps)
    by_array = jax.jit(lambda a, b: jax.vmap(schedules.window(1e-3, a, b))(steps))(jnp.int32(t0), jnp.int32(t1))
    np.testing.assert_array_equal(np.asarray(by_array), np.asarray(by_int))   # the same ops: bit-identical
  for factory in (schedules.early, schedules.late):
    by_int = jax.vmap(factory(1e-3, 12, ramp_steps=5))(steps)
    by_array = jax.vmap(factory(1e-3, np.int64(12), ramp_steps=5))(steps)
    np.testing.assert_array_equal(np.asarray(by_array), np.asarray(by_int))


@pytest.mark.parametrize("factory,args,match", [
    (schedules.window, (0.1, jnp.array(-1), 5), "start_step must be >= 0"),
    (schedules.window, (0.1, 5, np.array([6, 4])), r"end_step \(array\(\[6, 4\]\)\) must be >= start_step"),
    (schedules.window, (0.1, jnp.array(5.0), jnp.array(2.0)), "end_step .* must be >= start_step"),
    (schedules.early, (0.1, jnp.array(float("nan"))), "until_step must be >= 0"),
    (schedules.late, (0.1, jnp.array(True)), "from_step: an array step edge must have an integer or floating dtype, got bool"),
    (schedules.late, (0.1, 2.5), "from_step must be a non-negative int"),
    (schedules.window, (0.1, jnp.array(1 + 2j), 5), "start_step: an array step edge must have an integer"),
])
def test_concrete_array_edges_are_checked(factory, args, match):
  with pytest.raises((ValueError, TypeError), match=match):
    factory(*args)


def test_traced_edges_pass_through_unchecked_under_jit():
  # An inverted window cannot be detected while tracing; it is empty (never acts), as [t0 <= t < t1] says.
  got = jax.jit(lambda a, b: jax.vmap(schedules.window(1.0, a, b))(jnp.arange(10)))(jnp.int32(6), jnp.int32(3))
  np.testing.assert_array_equal(np.asarray(got), np.zeros(10))


# ---------------------------------------------------------------- masks on an NNX model


class Zoo(nnx.Module):
  """One of each layer kind the masks must tell apart."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(10, 4, rngs=rngs)
    self.conv = nnx.Conv(4, 4, kernel_size=(3,), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.ln = nnx.LayerNorm(4, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
    self.classifier = nnx.Linear(4, 3, rngs=rngs)


@pytest.fixture(scope="module")
def zoo_states():
  state = nnx.state(Zoo(nnx.Rngs(0)), nnx.Param)
  return {"state": state, "pure": nnx.as_pure(state), "dict": nnx.to_pure_dict(state)}


def _selected(mask, params):
  return sorted(p for p, on in masks.resolve(mask, params).items() if on)


ALL_PATHS = sorted([
    "embed/embedding", "conv/kernel", "conv/bias", "bn/scale", "bn/bias", "ln/scale", "ln/bias",
    "blocks/0/kernel", "blocks/0/bias", "blocks/1/kernel", "blocks/1/bias",
    "classifier/kernel", "classifier/bias",
])


@pytest.mark.parametrize("form", ["state", "pure", "dict"])
def test_masks_select_expected_paths(zoo_states, form):
  params = zoo_states[form]
  assert _selected(None, params) == ALL_PATHS
  assert _selected(masks.kernels(), params) == sorted(
      ["embed/embedding", "conv/kernel", "blocks/0/kernel", "blocks/1/kernel", "classifier/kernel"])
  assert _selected(masks.include(r"^blocks/\d+/"), params) == sorted(
      ["blocks/0/kernel", "blocks/0/bias", "blocks/1/kernel", "blocks/1/bias"])
  assert _selected(masks.exclude("bias$", "scale$", "embedding"), params) == sorted(
      ["conv/kernel", "blocks/0/kernel", "blocks/1/kernel", "classifier/kernel"])
  no_norm_kernels = masks.all_of(masks.kernels(), masks.exclude("^embed", "classifier"))
  assert _selected(no_norm_kernels, params) == sorted(["conv/kernel", "blocks/0/kernel", "blocks/1/kernel"])
  norms = masks.any_of(masks.include("^bn/"), masks.include("^ln/"))
  assert _selected(norms, params) == sorted(["bn/scale", "bn/bias", "ln/scale", "ln/bias"])
  assert _selected(masks.negate(masks.kernels()), params) == sorted(
      set(ALL_PATHS) - set(_selected(masks.kernels(), params)))


def _walk(tree, prefix=""):
  """(path, leaf) of a nested dict, depth first in sorted key order: a reference for the "/"-joined paths."""
  if not isinstance(tree, dict):
    return [(prefix, tree)]
  return [pair for key in sorted(tree, key=str) for pair in _walk(tree[key], f"{prefix}/{key}" if prefix else str(key))]


def test_resolve_gives_one_bool_per_path_in_flattening_order_on_every_form(zoo_states):
  reference = [path for path, _ in _walk(zoo_states["dict"])]
  expected = {p: p.endswith("kernel") or p == "embed/embedding" for p in reference}
  abstract = jax.eval_shape(lambda: zoo_states["dict"])   # ShapeDtypeStruct leaves: no values needed
  for form in (zoo_states["state"], zoo_states["pure"], zoo_states["dict"], abstract):
    got = masks.resolve(masks.kernels(), form)
    assert list(got) == reference and got == expected
    assert all(type(v) is bool for v in got.values())
  assert masks.resolve(None, abstract) == {p: True for p in reference}
  with pytest.raises(ValueError, match="include: regex 'kernl' matches no parameter path"):
    masks.resolve(masks.include("kernl"), abstract)


def test_map_with_path_passes_each_leafs_mask_path_and_the_other_trees_leaves(zoo_states):
  params = zoo_states["dict"]
  offsets = jax.tree.map(lambda x: jnp.full_like(x, 2.0), params)
  seen = []

  def fn(path, x, y):
    seen.append(path)
    return x * (3.0 if path.startswith("blocks/") else 1.0) + y

  out = masks.map_with_path(fn, params, offsets)
  assert seen == [path for path, _ in _walk(params)]
  for path, leaf in _walk(out):
    original = dict(_walk(params))[path]
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(original) * (3.0 if path.startswith("blocks/") else 1.0)
                                  + 2.0)
  # On an nnx.State the path drops the Variable's ".value": the same strings the masks match.
  state_paths = []
  masks.map_with_path(lambda path, x: state_paths.append(path) or x, zoo_states["state"])
  assert sorted(state_paths) == ALL_PATHS


def test_masks_on_nested_dict_and_prefix_masks():
  params = {"encoder": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}},
            "head": {"kernel": jnp.ones((2, 1))}}
  assert _selected(masks.include("^encoder/"), params) == ["encoder/dense/bias", "encoder/dense/kernel"]
  # A prefix mask covers a whole subtree; the longest matching prefix wins.
  prefix = {"encoder": True, "head": False}
  assert _selected(prefix, params) == ["encoder/dense/bias", "encoder/dense/kernel"]


def test_dict_mask_applies_to_nnx_state(zoo_states):
  # A nested-dict mask built by path selects the same leaves in an nnx.State of Variables.
  mask_dict = jax.tree.map(lambda x: x.ndim >= 2, zoo_states["dict"])
  assert _selected(mask_dict, zoo_states["state"]) == _selected(masks.kernels(), zoo_states["dict"])


def test_regex_matching_nothing_is_an_error_naming_it(zoo_states):
  with pytest.raises(ValueError, match=r"'\^attention' matches no parameter"):
    masks.include("^attention")(zoo_states["pure"])
  with pytest.raises(ValueError, match="invalid regex"):
    masks.exclude("(")
  # Excluding what is not there is harmless (generic exclusions), but still reported.
  with pytest.warns(UserWarning, match=r"'\^attention' matches no parameter"):
    selected = _selected(masks.exclude("^attention"), zoo_states["pure"])
  assert selected == ALL_PATHS


def test_mask_structure_mismatch_names_the_path():
  params = {"a": jnp.ones(2), "b": {"c": jnp.ones(2)}}
  with pytest.raises(ValueError, match="'b/c' has no entry"):
    masks.resolve({"a": True, "b": {"d": True}}, params)
  with pytest.raises(ValueError, match="'z'.*no parameter"):
    masks.resolve({"a": True, "b": True, "z": False}, params)
  with pytest.raises(TypeError, match="'a'.*expected a bool"):
    masks.resolve({"a": 1.0, "b": True}, params)


# ---------------------------------------------------------------- scale_invariant


class SmallCNN(nnx.Module):
  def __init__(self, rngs, norm=True):
    self.norm = norm
    self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), use_bias=not norm, rngs=rngs)
    self.conv2 = nnx.Conv(4, 4, kernel_size=(3, 3), use_bias=not norm, rngs=rngs)
    if norm:
      self.bn1 = nnx.BatchNorm(4, rngs=rngs)
      self.bn2 = nnx.BatchNorm(4, rngs=rngs)
    self.classifier = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    x = self.conv1(x)
    x = nnx.relu(self.bn1(x) if self.norm else x)
    x = self.conv2(x)
    x = nnx.relu(self.bn2(x) if self.norm else x)
    return self.classifier(x.mean(axis=(1, 2)))


def _apply_fn(model):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(p, x):
    return nnx.merge(graphdef, p, rest)(x)   # BatchNorm in training mode: batch statistics

  return apply_fn, params


@pytest.mark.parametrize("norm", [True, False])
def test_scale_invariant_finds_exactly_the_layers_before_batchnorm(norm):
  apply_fn, params = _apply_fn(SmallCNN(nnx.Rngs(0), norm=norm))
  x = jax.random.normal(jax.random.key(1), (8, 6, 6, 1))
  found = _selected(masks.scale_invariant(apply_fn, params, x), params)
  assert found == (["conv1/kernel", "conv2/kernel"] if norm else [])
