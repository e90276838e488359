"""Each placement of the decay against an independent reference: optax itself, autodiff, hand-written updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wd_optax
from _tol import assert_close_scaled

STEPS = 50


def _params(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {
      "dense": {"kernel": jax.random.normal(k1, (4, 3)), "bias": jax.random.normal(k2, (3,))},
      "out": {"kernel": jax.random.normal(k3, (3, 2))},
  }


def _loss(params, x):
  h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
  return jnp.mean((h @ params["out"]["kernel"]) ** 2)


def _batches(steps=STEPS, seed=1):
  return jax.random.normal(jax.random.key(seed), (steps, 8, 4))


def _run(tx, loss_fn, params, xs):
  """Runs ``tx`` on ``loss_fn`` over the batches ``xs``; returns the parameters after every step."""

  def step(carry, x):
    p, s = carry
    grads = jax.grad(loss_fn)(p, x)
    updates, s = tx.update(grads, s, p)
    p = optax.apply_updates(p, updates)
    return (p, s), p

  _, trajectory = jax.lax.scan(step, (params, tx.init(params)), xs)
  return trajectory


def _assert_trajectories_close(actual, expected, c=100):
  """Per leaf, the whole trajectory: float32 round-off of the leaf's scale (two programs); c=0: bit-identical."""
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    if c == 0:
      np.testing.assert_array_equal(a, e)
    else:
      assert_close_scaled(a, e, c=c)


SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, STEPS)
KERNELS_ONLY = {"dense": {"kernel": True, "bias": False}, "out": {"kernel": True}}


@pytest.mark.parametrize("learning_rate", [1e-2, SCHEDULE], ids=["constant", "schedule"])
@pytest.mark.parametrize("mask", [None, KERNELS_ONLY, wd_optax.masks.kernels()],
                         ids=["unmasked", "tree-mask", "callable-mask"])
def test_adam_decoupled_lr_equals_optax_adamw(learning_rate, mask):
  ours = wd_optax.adam(learning_rate, weight_decay=0.1, decay="decoupled", coupling="lr", mask=mask)
  reference_mask = KERNELS_ONLY if mask is not None else None
  reference = optax.adamw(learning_rate, weight_decay=0.1, mask=reference_mask)
  params, xs = _params(), _batches()
  _assert_trajectories_close(_run(ours, _loss, params, xs), _run(reference, _loss, params, xs))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("learning_rate", [0.05, SCHEDULE], ids=["constant", "schedule"])
def test_sgd_l2_equals_sgd_on_penalised_loss(nesterov, learning_rate):
  weight_decay = 0.03

  def penalised(params, x):  # only kernels are decayed: the mask below
    l2 = sum(jnp.sum(params[k]["kernel"] ** 2) for k in ("dense", "out"))
    return _loss(params, x) + 0.5 * weight_decay * l2

  ours = wd_optax.sgd(learning_rate, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay,
                      decay="l2", mask=wd_optax.masks.kernels())
  reference = optax.sgd(learning_rate, momentum=0.9, nesterov=nesterov)
  params, xs = _params(), _batches()
  _assert_trajectories_close(_run(ours, _loss, params, xs), _run(reference, penalised, params, xs))


def test_adam_l2_equals_add_decayed_weights_then_adam():
  reference = optax.chain(optax.add_decayed_weights(0.05), optax.scale_by_adam(),
                          optax.scale_by_learning_rate(1e-2))
  ours = wd_optax.adam(1e-2, weight_decay=0.05, decay="l2")
  params, xs = _params(), _batches()
  _assert_trajectories_close(_run(ours, _loss, params, xs), _run(reference, _loss, params, xs))


def test_scale_by_adam_l2_without_l2_is_exactly_scale_by_adam():
  ours = wd_optax.scale_by_adam_l2(0.3, l2_in_first_moment=False, l2_in_second_moment=False,
                                   l2_preconditioned=False)
  reference = optax.scale_by_adam()
  params, xs = _params(), _batches(steps=10)
  a = _run(optax.chain(ours, optax.scale_by_learning_rate(1e-2)), _loss, params, xs)
  b = _run(optax.chain(reference, optax.scale_by_learning_rate(1e-2)), _loss, params, xs)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _numpy_adam_l2(params, grads_fn, xs, lr, wd, b1, b2, eps, in_m, in_v, precond):
  """Adam with routed L2, written out in numpy from the formula in docs/papers.md §1."""
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v2 = {k: np.zeros_like(v) for k, v in w.items()}
  for t, x in enumerate(xs, start=1):
    g = {k: np.asarray(v, np.float64) for k, v in grads_fn({k: jnp.asarray(v, jnp.float32) for k, v in w.items()}, x).items()}
    for k in w:
      r = wd * w[k]
      m[k] = b1 * m[k] + (1 - b1) * (g[k] + in_m * r)
      v2[k] = b2 * v2[k] + (1 - b2) * (g[k] + in_v * r) ** 2
      denom = np.sqrt(v2[k] / (1 - b2 ** t)) + eps
      w[k] = w[k] - lr * (m[k] / (1 - b1 ** t) / denom + precond * r / denom)
  return w


@pytest.mark.parametrize("switches", [(1, 1, 0), (0, 1, 1), (0, 0, 1), (1, 0, 0)])
def test_scale_by_adam_l2_matches_hand_written_adam(switches):
  in_m, in_v, precond = switches

  def loss(p, x):
    return jnp.mean((jnp.tanh(x @ p["a"]) @ p["b"]) ** 2)

  params = {"a": jax.random.normal(jax.random.key(3), (4, 3)),
            "b": jax.random.normal(jax.random.key(4), (3, 2))}
  xs = _batches(steps=20)
  tx = optax.chain(
      wd_optax.scale_by_adam_l2(0.2, b1=0.8, b2=0.95, eps=1e-6, l2_in_first_moment=bool(in_m),
                                l2_in_second_moment=bool(in_v), l2_preconditioned=bool(precond)),
      optax.scale_by_learning_rate(1e-2))
  ours = jax.tree.map(lambda leaf: leaf[-1], _run(tx, loss, params, xs))
  expected = _numpy_adam_l2(params, jax.grad(loss), np.asarray(xs), 1e-2, 0.2, 0.8, 0.95, 1e-6,
                            in_m, in_v, precond)
  for k in params:
    assert_close_scaled(ours[k], expected[k], c=200, err_msg=k)   # 20 float32 Adam steps vs float64


@pytest.mark.parametrize("coupling", wd_optax.COUPLINGS)
def test_decoupled_decay_coupling_matches_hand_written_update(coupling):
  peak, wd = 1e-2, 0.3
  schedule = optax.warmup_cosine_decay_schedule(0.0, peak, 10, STEPS, end_value=1e-4)
  tx = optax.chain(
      optax.trace(decay=0.9),
      optax.scale_by_learning_rate(schedule),
      wd_optax.decoupled_decay(wd, coupling=coupling, learning_rate=schedule, peak_learning_rate=peak))
  params, xs = _params(), _batches()
  ours = _run(tx, _loss, params, xs)

  factor = {"lr": lambda eta: eta, "schedule": lambda eta: eta / peak,
            "independent": lambda eta: 1.0, "corrected": lambda eta: eta ** 2 / peak}[coupling]
  w = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  momentum = jax.tree.map(np.zeros_like, w)
  for t in range(STEPS):
    eta = float(schedule(t))
    g = jax.grad(_loss)(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), w), xs[t])
    momentum = jax.tree.map(lambda b, gi: 0.9 * b + np.asarray(gi, np.float64), momentum, g)
    w = jax.tree.map(lambda wi, b: wi - eta * b - factor(eta) * wd * wi, w, momentum)
    step_params = jax.tree.map(lambda leaf: leaf[t], ours)
    for a, e in zip(jax.tree.leaves(step_params), jax.tree.leaves(w)):
      # c = 1000 (1.2e-4 of the params' scale, as before): the float64 reference takes float32 gradients at
      # its own float64 iterate, so the two trajectories drift apart by round-off over the steps.
      assert_close_scaled(a, e, c=1000, err_msg=f"step {t}")


def test_sgd_decoupled_lr_equals_sgd_l2_without_momentum():
  # Without momentum, decoupled decay with lr coupling and coupled L2 are the same update.
  a = wd_optax.sgd(0.1, momentum=None, weight_decay=0.01, decay="l2")
  b = wd_optax.sgd(0.1, momentum=None, weight_decay=0.01, decay="decoupled")
  params, xs = _params(), _batches(steps=20)
  _assert_trajectories_close(_run(a, _loss, params, xs), _run(b, _loss, params, xs))


def test_adam_l2_outside_momentum_is_the_documented_switches():
  ours = wd_optax.adam(1e-2, weight_decay=0.1, decay="l2_outside_momentum")
  reference = optax.chain(
      wd_optax.scale_by_adam_l2(0.1, l2_in_first_moment=False, l2_in_second_moment=True,
                                l2_preconditioned=True),
      optax.scale_by_learning_rate(1e-2))
  params, xs = _params(), _batches(steps=10)
  _assert_trajectories_close(_run(ours, _loss, params, xs), _run(reference, _loss, params, xs), c=0)


def test_early_decay_schedule_reaches_the_optimizer():
  # The decay follows wd_optax.schedules.early: after the switch-off the update equals plain SGD's.
  params = {"w": jnp.ones(3)}
  tx = wd_optax.sgd(0.1, momentum=None, weight_decay=wd_optax.schedules.early(0.5, until_step=2))
  state = tx.init(params)
  zero = {"w": jnp.zeros(3)}
  observed = []
  for _ in range(4):
    updates, state = tx.update(zero, state, params)
    observed.append(float(updates["w"][0]))
  np.testing.assert_allclose(observed, [-0.05, -0.05, 0.0, 0.0], rtol=1e-6)
