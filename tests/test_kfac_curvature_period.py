"""Curvature every k steps: ``value_grad_and_curvature(estimate=...)`` and how ``scale_by_kfac`` folds it in.

References: ``nnx.value_and_grad`` for loss, gradients and batch statistics; a numpy float64 running average,
π-damped inverse and preconditioned update written out by hand.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wd_optax import kfac
from _tol import assert_close_scaled


class Net(nnx.Module):
  def __init__(self, rngs):
    self.body = kfac.Linear(5, 6, rngs=rngs)
    self.norm = nnx.BatchNorm(6, rngs=rngs)          # mutable batch statistics must be written back
    self.head = kfac.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.tanh(self.norm(self.body(x))))


def ce_loss(model, batch):
  logits = model(batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits


def batch_of(seed=0, n=16):
  rng = np.random.default_rng(seed)
  return {"x": jnp.asarray(rng.normal(size=(n, 5)), jnp.float32),
          "y": jnp.asarray(rng.integers(0, 3, size=n), jnp.int32)}


@functools.lru_cache(maxsize=None)
def traced_call():
  """One compilation with ``estimate`` as a traced argument."""
  return nnx.jit(lambda model, batch, key, estimate: kfac.value_grad_and_curvature(
      ce_loss, model, batch, mode="fisher", key=key, estimate=estimate))


def test_estimate_false_keeps_loss_gradients_and_batch_stats_and_marks_no_curvature():
  batch, key = batch_of(), jax.random.key(3)
  reference = Net(nnx.Rngs(0))
  (ref_loss, _), ref_grads = nnx.value_and_grad(ce_loss, has_aux=True)(reference, batch)
  ref_stats = nnx.state(reference, nnx.BatchStat)
  results = {}
  for name, call in (("static", lambda m, e: kfac.value_grad_and_curvature(ce_loss, m, batch, mode="fisher",
                                                                           key=key, estimate=e)),
                     ("traced", lambda m, e: traced_call()(m, batch, key, jnp.asarray(e)))):
    for estimate in (True, False):
      model = Net(nnx.Rngs(0))
      (loss, _), grads, curvature = call(model, estimate)
      # Another program than nnx.value_and_grad: float32 round-off of each array's scale.
      assert_close_scaled(loss, ref_loss, c=16)
      # One scale for the whole gradient: the body's bias sits before a batch norm, so its gradient is 0 up
      # to round-off of the kernels' gradients (seen 2e-8 against a true 0 and a leaf maximum of 1.5e-8).
      assert_close_scaled(grads, ref_grads, c=100, scale="tree")
      assert_close_scaled(nnx.state(model, nnx.BatchStat), ref_stats, c=16)
      assert sorted(curvature) == ["body", "head"]
      for layer in curvature.values():
        assert float(layer.estimated) == float(estimate)
        assert (np.abs(np.asarray(layer.a)).sum() > 0) == estimate
      results[name, estimate] = curvature
  for layer in ("body", "head"):            # the traced branch computes what the static call does
    # Two compiled programs: an entry of -0.0172 next to 0.42 was seen 2.6e-8 apart (0.5 eps of the scale).
    assert_close_scaled(results["traced", True][layer].a, results["static", True][layer].a, c=16)
    assert_close_scaled(results["traced", True][layer].s, results["static", True][layer].s, c=16)


def test_estimate_must_be_a_boolean_scalar():
  model = Net(nnx.Rngs(0))
  with pytest.raises(TypeError, match="estimate must be a Python bool or a boolean scalar"):
    kfac.value_grad_and_curvature(ce_loss, model, batch_of(), mode="empirical", estimate=jnp.ones(3, bool))
  with pytest.raises(TypeError, match="estimate"):
    kfac.value_grad_and_curvature(ce_loss, model, batch_of(), mode="empirical", estimate=1)


def _numpy_inverse(factor, root):
  return np.linalg.inv(factor + root * np.eye(factor.shape[0]))


def test_running_averages_skip_batches_without_curvature_numpy_reference():
  """Estimated on steps 0, 2, 3 of 5; ema 0.5; inverses every step. Averages, inverses, updates vs numpy."""
  damping, ema = 1e-2, 0.5
  model = Net(nnx.Rngs(0))
  tx = kfac.scale_by_kfac(damping, ema=ema, inverse_every=1)
  update = jax.jit(lambda g, s, c: tx.update(g, s, None, curvature=c))
  state = tx.init(nnx.state(model, nnx.Param))
  flags = [True, False, True, True, False]
  averages, seen = {}, 0
  for step, flag in enumerate(flags):
    (_, _), grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch_of(step), mode="empirical",
                                                             estimate=flag)
    grads = nnx.as_pure(grads)
    updates, state = update(grads, state, curvature)
    beta = min(ema, seen / (seen + 1.0))
    if flag:
      for layer, c in curvature.items():
        a, s = np.float64(c.a), np.float64(c.s)
        old = averages.get(layer, (np.zeros_like(a), np.zeros_like(s)))
        averages[layer] = (beta * old[0] + (1 - beta) * a, beta * old[1] + (1 - beta) * s)
      seen += 1
    assert int(state.curvature_count) == seen
    for layer, (a, s) in averages.items():
      assert_close_scaled(state.factors[layer].a, a, c=100)   # float32 batch averages vs float64
      pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(s) / s.shape[0]))
      inv_a, inv_s = _numpy_inverse(a, pi * np.sqrt(damping)), _numpy_inverse(s, np.sqrt(damping) / pi)
      g = np.concatenate([np.float64(grads[layer]["kernel"]), np.float64(grads[layer]["bias"])[None]])
      expected = inv_a @ g @ inv_s
      # c = 2e4 (2e-3 of the update's scale, as before for its largest entries): two float32 damped inverses
      # with damping 1e-2 against factors of order 1, i.e. condition numbers ~1e2 each, multiply the round-off.
      assert_close_scaled(updates[layer]["kernel"], expected[:-1], c=2e4, scale=np.abs(expected).max(),
                          err_msg=f"step {step} {layer}")
      assert_close_scaled(updates[layer]["bias"], expected[-1], c=2e4, scale=np.abs(expected).max(),
                          err_msg=f"step {step} {layer}")


def test_before_any_curvature_the_gradient_passes_unchanged():
  model = Net(nnx.Rngs(0))
  tx = kfac.scale_by_kfac(1e-3, inverse_every=1)
  state = tx.init(nnx.state(model, nnx.Param))
  (_, _), grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch_of(), mode="empirical",
                                                           estimate=False)
  grads = nnx.as_pure(grads)
  updates, state = tx.update(grads, state, None, curvature=curvature)
  jax.tree.map(np.testing.assert_array_equal, updates, grads)     # not grads / γ from zero factors
  assert int(state.curvature_count) == 0


def test_nnx_training_step_with_curvature_every_third_step_compiles_once():
  model = Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, kfac.kfac(0.05, damping=1e-2, inverse_every=3), wrt=nnx.Param)
  traces = []

  @nnx.jit
  def train_step(model, optimizer, batch, key):
    traces.append(1)
    estimate = optimizer.step[...] % 3 == 0
    (loss, _), grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch, mode="fisher", key=key,
                                                                estimate=estimate)
    optimizer.update(model, grads, curvature=curvature)
    return loss

  counts, losses = [], []
  for step in range(7):
    losses.append(float(train_step(model, optimizer, batch_of(0, n=64), jax.random.key(step))))
    counts.append(int(optimizer.opt_state[0].curvature_count[...]))
  assert len(traces) == 1
  assert counts == [1, 1, 1, 2, 2, 2, 3]                     # estimated on steps 0, 3 and 6
  assert losses[-1] < losses[0]


def test_similar_sized_factors_are_inverted_as_one_padded_batch_and_match_numpy():
  """Sizes 12, 11, 10 (within 2^(1/3)) share a padded batch; 5 and 4 another; the inverses are exact."""
  from wd_optax.kfac import _preconditioner
  sizes = {("x", "a"): 12, ("x", "s"): 5, ("y", "a"): 11, ("y", "s"): 4, ("z", "a"): 10, ("z", "s"): 3}
  groups = _preconditioner._size_groups(sizes)
  assert sorted(map(sorted, groups)) == [[("x", "a"), ("y", "a"), ("z", "a")], [("x", "s"), ("y", "s")],
                                         [("z", "s")]]
  rng = np.random.default_rng(1)

  def factor(n, scale):
    rows = rng.standard_normal((3 * n, n)) * scale
    return rows.T @ rows / (3 * n)

  # Output-gradient factors far below unit scale, as in training: the padding must not spoil conditioning.
  factors = {layer: kfac.KfacFactors(jnp.asarray(factor(sizes[layer, "a"], 3.0), jnp.float32),
                                     jnp.asarray(factor(sizes[layer, "s"], 1e-3), jnp.float32))
             for layer in "xyz"}
  dampings = {"x": 1e-2, "y": 1e-3, "z": 1e-1}
  for method in kfac.INVERSES:
    got = jax.jit(lambda f: _preconditioner._all_damped_inverses(f, dampings, True, method))(factors)
    for layer, f in factors.items():
      a, s = np.float64(f.a), np.float64(f.s)
      pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(s) / s.shape[0]))
      root = np.sqrt(dampings[layer])
      for inv, ref in ((got[layer].a, _numpy_inverse(a, pi * root)), (got[layer].s, _numpy_inverse(s, root / pi))):
        # c = 2000 (2.4e-4 of the inverse's scale, as before for its largest entries): a float32 inverse of a
        # damped factor with condition number up to ~1e3 (damping 1e-3) loses that much to round-off.
        assert_close_scaled(inv, ref, c=2000, err_msg=f"{method} {layer}")


def test_curvature_every_two_programs_matches_one_and_skips_statistics_statically():
  """``programs="two"``: two traces (with and without statistics) on one state; same result as ``"cond"``."""
  def run(programs):
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, kfac.kfac(0.05, damping=1e-2, inverse_every=2), wrt=nnx.Param)
    traces = []

    def train_step(model, optimizer, batch, key, *, estimate):
      traces.append(estimate)
      (loss, _), grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch, mode="fisher", key=key,
                                                                  estimate=estimate)
      optimizer.update(model, grads, curvature=curvature)
      return loss

    step = kfac.curvature_every(train_step, 3, programs=programs, jit=nnx.jit)
    for i in range(4):
      step(i, model, optimizer, batch_of(i), jax.random.key(i))
    assert int(optimizer.opt_state[0].curvature_count[...]) == 2          # steps 0 and 3
    return nnx.state((model, optimizer)), traces

  (two, two_traces), (cond, cond_traces) = run("two"), run("cond")
  assert sorted(two_traces) == [False, True] and len(cond_traces) == 1
  # Two compiled programs against one: float32 round-off of a few K-FAC steps.
  assert_close_scaled(nnx.to_pure_dict(two), nnx.to_pure_dict(cond), c=200)
  with pytest.raises(ValueError, match="programs"):
    kfac.curvature_every(lambda **_: None, 3, programs="three")
