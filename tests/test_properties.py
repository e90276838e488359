"""Property tests: the identities of the foundation over random pytrees and rates (hypothesis)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

import wd_optax
from _tol import assert_close_scaled

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
rates = st.floats(0.0, 1.0, allow_nan=False, width=32)
positive_rates = st.floats(0.0009765625, 1.0, allow_nan=False, width=32)


@st.composite
def trees(draw):
  """A nested dict of float32 arrays with random shapes, plus a random bool mask over it."""
  names = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4, unique=True))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  tree, mask = {}, {}
  for name in names:
    if draw(st.booleans()):
      tree[name] = {"w": jnp.asarray(rng.standard_normal(draw(shapes)), jnp.float32)}
      mask[name] = {"w": draw(st.booleans())}
    else:
      tree[name] = jnp.asarray(rng.standard_normal(draw(shapes)), jnp.float32)
      mask[name] = draw(st.booleans())
  grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), tree)
  return tree, grads, mask


def _close(a, b, c=16):
  """Per leaf: float32 round-off of the leaf's scale (an entry g + λw near 0 keeps the error of its terms);
  c=0: bit-identical."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if c == 0:
      np.testing.assert_array_equal(x, y)
    else:
      assert_close_scaled(x, y, c=c)


@SETTINGS
@given(trees(), rates)
def test_add_l2_adds_lambda_w_on_masked_leaves(data, wd):
  params, grads, mask = data
  tx = wd_optax.add_l2(wd, mask=mask)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = jax.tree.map(lambda g, w, m: g + wd * w if m else g, grads, params, mask)
  _close(updates, expected)


@SETTINGS
@given(trees(), rates, positive_rates, st.sampled_from(wd_optax.COUPLINGS))
def test_decoupled_decay_shrinks_by_the_coupling_factor(data, wd, lr, coupling):
  params, updates_in, mask = data
  peak = 2.0 * lr
  tx = wd_optax.decoupled_decay(wd, coupling=coupling, learning_rate=lr, peak_learning_rate=peak
                                if coupling in ("schedule", "corrected") else None, mask=mask)
  factor = {"lr": lr, "schedule": lr / peak, "independent": 1.0, "corrected": lr * lr / peak}[coupling]
  updates, _ = tx.update(updates_in, tx.init(params), params)
  expected = jax.tree.map(lambda u, w, m: u - factor * wd * w if m else u, updates_in, params, mask)
  _close(updates, expected, c=100)


@SETTINGS
@given(trees(), rates, positive_rates)
def test_plain_sgd_l2_equals_decoupled_lr(data, wd, lr):
  params, grads, mask = data
  a = wd_optax.sgd(lr, momentum=None, weight_decay=wd, decay="l2", mask=mask)
  b = wd_optax.sgd(lr, momentum=None, weight_decay=wd, decay="decoupled", mask=mask)
  ua, _ = a.update(grads, a.init(params), params)
  ub, _ = b.update(grads, b.init(params), params)
  _close(ua, ub, c=100)


@SETTINGS
@given(trees(), rates, positive_rates)
def test_adam_decoupled_equals_adamw(data, wd, lr):
  params, grads, mask = data
  ours = wd_optax.adam(lr, weight_decay=wd, mask=mask)
  reference = optax.adamw(lr, weight_decay=wd, mask=mask)
  s1, s2 = ours.init(params), reference.init(params)
  for _ in range(2):
    u1, s1 = ours.update(grads, s1, params)
    u2, s2 = reference.update(grads, s2, params)
    _close(u1, u2, c=100)


@SETTINGS
@given(trees(), rates)
def test_adam_buffers_without_l2_equal_scale_by_adam(data, wd):
  params, grads, _ = data
  ours = wd_optax.scale_by_adam_l2(wd, l2_in_first_moment=False, l2_in_second_moment=False,
                                   l2_preconditioned=False)
  reference = optax.scale_by_adam()
  u1, _ = ours.update(grads, ours.init(params), params)
  u2, _ = reference.update(grads, reference.init(params), params)
  _close(u1, u2, c=0)


@SETTINGS
@given(st.integers(0, 200), st.integers(0, 200), st.integers(0, 30), rates)
def test_early_plus_late_is_the_whole_rate(split, step, ramp, value):
  # Early and late decay with the same switch point and ramp partition the rate at every step.
  early = wd_optax.schedules.early(value, split, ramp_steps=ramp)
  late = wd_optax.schedules.late(value, split, ramp_steps=ramp)
  np.testing.assert_allclose(float(early(step)) + float(late(step)), value, rtol=1e-5, atol=1e-7)
