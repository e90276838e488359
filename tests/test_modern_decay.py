"""Cautious weight decay, AdamP / SGDP, AdamS / SGDS and the decay timescale against numpy ports of the papers' rules.

Each reference below is written from the paper's update rule (and the authors' PyTorch code where the paper
leaves a detail open: AdamP's order of the channel and layer tests, SGDP's and SGDS's 1/(1-momentum)
decay, AdamS's mean over every parameter), in float64 numpy, one step at a time.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import wd_optax
from wd_optax import timescale
from _tol import assert_close_scaled

STEPS = 4


def _lr(t):
  """The learning-rate schedule both sides use: linear from 0.02 to 0.005 over 4 steps."""
  return 0.02 - 0.00375 * min(t, 4)


SCHEDULE = optax.linear_schedule(0.02, 0.005, 4)
PEAK = 0.02


def _start(seed=0):
  rng = np.random.default_rng(seed)
  return {"kernel": rng.normal(size=(6, 4)), "bias": rng.normal(size=(4,))}


def _grad_sequence(seed=1):
  rng = np.random.default_rng(seed)
  return [{"kernel": rng.normal(size=(6, 4)), "bias": rng.normal(size=(4,))} for _ in range(STEPS)]


def _run_ours(tx, params, grads_of):
  """Runs ``tx`` for STEPS steps; ``grads_of(t, params_as_numpy)`` gives each step's gradient."""
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(STEPS):
    grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads_of(t, jax.tree.map(np.asarray, params)))
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params)


# --- cautious weight decay ------------------------------------------------------------------------------


def _coupling_factor(coupling, t):
  lr = _lr(t)
  return {"lr": lr, "schedule": lr / PEAK, "independent": 1.0, "corrected": lr * lr / PEAK}[coupling]


def _cautious_adam_reference(params, grads, coupling, wd, decayed, b1=0.9, b2=0.999, eps=1e-8):
  """θ ← θ − η_t u − c_t λ 1[u⊙θ ≥ 0] ⊙ θ with u Adam's direction (Chen et al. 2025, Alg. 1 with AdamW)."""
  theta = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v2 = {k: np.zeros_like(v) for k, v in params.items()}
  skipped = 0
  for t in range(STEPS):
    for k in theta:
      g = grads[t][k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      u = (m[k] / (1 - b1 ** (t + 1))) / (np.sqrt(v2[k] / (1 - b2 ** (t + 1))) + eps)
      agree = (u * theta[k] >= 0).astype(np.float64) if decayed[k] else 0.0
      skipped += int(np.sum(u * theta[k] < 0)) if decayed[k] else 0
      theta[k] = theta[k] - _lr(t) * u - _coupling_factor(coupling, t) * wd * agree * theta[k]
  return theta, skipped


@pytest.mark.parametrize("coupling", wd_optax.COUPLINGS)
def test_cautious_adam_matches_the_numpy_rule_for_every_coupling(coupling):
  params, grads = _start(), _grad_sequence()
  wd = 0.5
  reference, skipped = _cautious_adam_reference(params, grads, coupling, wd, {"kernel": True, "bias": False})
  assert skipped > 0   # some coordinates are not decayed: the test can tell cautious from plain decay
  tx = wd_optax.adam(SCHEDULE, weight_decay=wd, coupling=coupling, peak_learning_rate=PEAK,
                     mask=wd_optax.masks.kernels(), cautious=True)
  ours = _run_ours(tx, params, lambda t, _: grads[t])
  assert_close_scaled(ours, reference, c=200)   # float32 vs float64 over 4 Adam steps
  plain = _run_ours(wd_optax.adam(SCHEDULE, weight_decay=wd, coupling=coupling, peak_learning_rate=PEAK,
                                  mask=wd_optax.masks.kernels()), params, lambda t, _: grads[t])
  assert np.max(np.abs(plain["kernel"] - ours["kernel"])) > 1e-3


def test_cautious_sgd_matches_the_numpy_rule():
  params, grads = _start(), _grad_sequence()
  mu, wd = 0.9, 0.5
  theta = {k: v.copy() for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in params.items()}
  for t in range(STEPS):
    for k in theta:
      buf[k] = mu * buf[k] + grads[t][k]
      agree = (buf[k] * theta[k] >= 0).astype(np.float64)
      theta[k] = theta[k] - _lr(t) * (buf[k] + wd * agree * theta[k])
  tx = wd_optax.sgd(SCHEDULE, momentum=mu, weight_decay=wd, decay="decoupled", cautious=True)
  ours = _run_ours(tx, params, lambda t, _: grads[t])
  assert_close_scaled(ours, theta, c=100)


def test_cautious_is_refused_with_l2_decay():
  with pytest.raises(ValueError, match=r"cautious=True only applies to decay='decoupled'.*'l2'"):
    wd_optax.sgd(0.1, weight_decay=0.1, decay="l2", cautious=True)
  with pytest.raises(ValueError, match=r"cautious=True only applies.*'l2_outside_momentum'"):
    wd_optax.adam(0.1, weight_decay=0.1, decay="l2_outside_momentum", cautious=True)
  with pytest.raises(TypeError, match="cautious must be a bool"):
    wd_optax.decoupled_decay(0.1, learning_rate=0.1, cautious="yes")


# --- AdamP / SGDP ---------------------------------------------------------------------------------------
# PyTorch layout (output channel first), as the authors' code; output_channel="first" on our side.


def _channel_view(x):
  return x.reshape(x.shape[0], -1)


def _layer_view(x):
  return x.reshape(1, -1)


def _projection_reference(w, g, d, delta, wd_ratio, eps):
  """AdamP's projection: channel test first, then layer; returns (d, wd multiplier, which view)."""
  for name, view in (("channel", _channel_view), ("layer", _layer_view)):
    wv, gv = view(w), view(g)
    cos = np.abs(np.sum(wv * gv, axis=1)) / (
        np.maximum(np.linalg.norm(gv, axis=1), eps) * np.maximum(np.linalg.norm(wv, axis=1), eps))
    if cos.max() < delta / math.sqrt(wv.shape[1]):
      p_n = (wv / (np.linalg.norm(wv, axis=1, keepdims=True) + eps)).reshape(w.shape)
      radial = np.sum(_channel_view(p_n * d) if name == "channel" else _layer_view(p_n * d), axis=1)
      d = d - p_n * radial.reshape([-1] + [1] * (w.ndim - 1))
      return d, wd_ratio, name
  return d, 1.0, None


def _radial_params(seed=2):
  rng = np.random.default_rng(seed)
  return {"conv": rng.normal(size=(4, 3, 3, 3)), "dense": rng.normal(size=(5, 6)),
          "head": rng.normal(size=(3, 5)), "bias": rng.normal(size=(5,))}


def _radial_grads(t, params):
  """Gradients shaped so that each view of the test fires: conv per channel, dense per layer, head not."""
  rng = np.random.default_rng(100 + t)
  grads = {k: rng.normal(size=np.shape(params[k])) for k in sorted(params)}
  w = np.asarray(params["conv"], np.float64)
  wc, gc = _channel_view(w), _channel_view(grads["conv"])
  gc = gc - wc * (np.sum(wc * gc, axis=1, keepdims=True) / np.sum(wc * wc, axis=1, keepdims=True))
  grads["conv"] = gc.reshape(w.shape)
  w = np.asarray(params["dense"], np.float64)
  grads["dense"] = grads["dense"] - w * np.sum(w * grads["dense"]) / np.sum(w * w)
  grads["head"] = grads["head"] + 0.5 * np.asarray(params["head"])
  return grads


def _adamp_reference(params, lr, wd, delta=0.1, wd_ratio=0.1, b1=0.9, b2=0.999, eps=1e-8):
  theta = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v2 = {k: np.zeros_like(v) for k, v in params.items()}
  views = set()
  for t in range(STEPS):
    grads = _radial_grads(t, theta)
    for k in theta:
      g = grads[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      denom = np.sqrt(v2[k]) / math.sqrt(1 - b2 ** (t + 1)) + eps
      perturb = m[k] / denom
      ratio = 1.0
      if theta[k].ndim > 1:
        perturb, ratio, view = _projection_reference(theta[k], g, perturb, delta, wd_ratio, eps)
        views.add((k, view))
      theta[k] = theta[k] * (1 - lr * wd * ratio) - lr / (1 - b1 ** (t + 1)) * perturb
  return theta, views


def _sgdp_reference(params, lr, wd, momentum, nesterov, delta=0.1, wd_ratio=0.1, eps=1e-8):
  theta = {k: v.copy() for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in params.items()}
  views = set()
  for t in range(STEPS):
    grads = _radial_grads(t, theta)
    for k in theta:
      g = grads[k]
      buf[k] = momentum * buf[k] + g
      d = g + momentum * buf[k] if nesterov else buf[k]
      ratio = 1.0
      if theta[k].ndim > 1:
        d, ratio, view = _projection_reference(theta[k], g, d, delta, wd_ratio, eps)
        views.add((k, view))
      theta[k] = theta[k] * (1 - lr * wd * ratio / (1 - momentum)) - lr * d
  return theta, views


EXPECTED_VIEWS = {("conv", "channel"), ("dense", "layer"), ("head", None)}


def test_adamp_matches_the_numpy_rule():
  params = _radial_params()
  reference, views = _adamp_reference(params, lr=0.01, wd=0.5)
  assert views == EXPECTED_VIEWS   # both tests and the no-projection case are exercised
  ours = _run_ours(wd_optax.adamp(0.01, weight_decay=0.5, output_channel="first"), params, _radial_grads)
  assert_close_scaled(ours, reference, c=200)   # float32 vs float64 over 4 steps


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy_ball", "nesterov"])
def test_sgdp_matches_the_numpy_rule(nesterov):
  params = _radial_params()
  reference, views = _sgdp_reference(params, lr=0.05, wd=0.1, momentum=0.9, nesterov=nesterov)
  assert views == EXPECTED_VIEWS
  tx = wd_optax.sgdp(0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.1, output_channel="first")
  ours = _run_ours(tx, params, _radial_grads)
  assert_close_scaled(ours, reference, c=200)


def test_adamp_with_flax_layout_is_the_transposed_update():
  # Output channel last (flax, the default): the same leaves with their first axis moved last.
  to_last = lambda tree: {k: np.moveaxis(v, 0, -1) for k, v in tree.items()}
  params = _radial_params()
  reference, _ = _adamp_reference(params, lr=0.01, wd=0.5)
  ours = _run_ours(wd_optax.adamp(0.01, weight_decay=0.5), to_last(params),
                   lambda t, p: to_last(_radial_grads(t, {k: np.moveaxis(v, -1, 0) for k, v in p.items()})))
  assert_close_scaled(ours, to_last(reference), c=200)


def test_radial_projection_without_a_projected_leaf_is_the_wrapped_optimizer():
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
  grads = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4)}   # far from orthogonal to w
  tx = wd_optax.projections.radial_projection(
      optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(0.1)),
      wd_optax.decoupled_decay(0.01, learning_rate=0.1))
  ours, _ = tx.update(grads, tx.init(params), params)
  adamw = optax.adamw(0.1, weight_decay=0.01)
  expected, _ = adamw.update(grads, adamw.init(params), params)
  assert_close_scaled(ours, expected, c=4)


# --- AdamS / SGDS ---------------------------------------------------------------------------------------


def _adams_reference(params, grads, wd, decayed, b1=0.9, b2=0.999, eps=1e-8):
  """AdamS (Xie et al., Alg. 2): the decay divided by sqrt(mean of v̂ over every parameter entry)."""
  theta = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v2 = {k: np.zeros_like(v) for k, v in params.items()}
  for t in range(STEPS):
    for k in theta:
      m[k] = b1 * m[k] + (1 - b1) * grads[t][k]
      v2[k] = b2 * v2[k] + (1 - b2) * grads[t][k] ** 2
    v_hat = {k: v2[k] / (1 - b2 ** (t + 1)) for k in theta}
    mean_sqrt = math.sqrt(sum(v.sum() for v in v_hat.values()) / sum(v.size for v in v_hat.values()))
    for k in theta:
      if decayed[k]:
        theta[k] = theta[k] * (1 - wd * _lr(t) / mean_sqrt)
      theta[k] = theta[k] - _lr(t) / (1 - b1 ** (t + 1)) * m[k] / (np.sqrt(v_hat[k]) + eps)
  return theta


def test_adams_matches_the_numpy_rule():
  params = _start()
  grads = [{k: 0.1 * v for k, v in g.items()} for g in _grad_sequence()]  # small v̂: a strong stable decay
  reference = _adams_reference(params, grads, wd=0.05, decayed={"kernel": True, "bias": False})
  ours = _run_ours(wd_optax.adams(SCHEDULE, weight_decay=0.05, mask=wd_optax.masks.kernels()), params,
                   lambda t, _: grads[t])
  assert_close_scaled(ours, reference, c=200)
  adamw = _run_ours(wd_optax.adam(SCHEDULE, weight_decay=0.05, mask=wd_optax.masks.kernels()), params,
                    lambda t, _: grads[t])
  assert np.max(np.abs(adamw["kernel"] - ours["kernel"])) > 1e-3   # the stable decay is not AdamW's


def test_sgds_matches_the_numpy_rule():
  params, grads = _start(), _grad_sequence()
  mu, wd = 0.9, 0.05
  theta = {k: v.copy() for k, v in params.items()}
  buf = {}
  for t in range(STEPS):
    for k in theta:
      buf[k] = grads[t][k].copy() if t == 0 else mu * buf[k] + grads[t][k]   # the authors' first buffer
      theta[k] = theta[k] * (1 - _lr(t) * wd / (1 - mu)) - _lr(t) * buf[k]
  ours = _run_ours(wd_optax.sgds(SCHEDULE, momentum=mu, weight_decay=wd), params, lambda t, _: grads[t])
  assert_close_scaled(ours, theta, c=100)


def test_adams_sharded_over_8_devices_equals_one_device():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)")
  rng = np.random.default_rng(0)
  params = {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
  grads = [{k: jnp.asarray(0.1 * rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
           for _ in range(3)]
  tx = wd_optax.adams(1e-2, weight_decay=0.1, mask=wd_optax.masks.kernels())

  def run(put):
    p = put(params)
    state = jax.jit(tx.init)(p)
    update = jax.jit(tx.update)
    for g in grads:
      updates, state = update(put(g), state, p)
      p = optax.apply_updates(p, updates)
    return p, state

  mesh = Mesh(np.asarray(devices[:8]), ("data",))
  shard = lambda tree: jax.device_put(tree, NamedSharding(mesh, PartitionSpec("data")))
  params8, state8 = run(shard)
  params1, _ = run(lambda tree: jax.device_put(tree, devices[0]))
  assert all(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(params8))
  assert all(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(state8.adam.nu))
  # The global mean of v̂ is an all-reduce across devices, summed in another order: float32 round-off.
  assert_close_scaled(params8, params1, c=50)


# --- decay timescale ------------------------------------------------------------------------------------


def test_timescale_formulas_and_round_trip():
  # Wang & Aitchison: τ_iter = 1/(ηλ), τ_epoch = τ_iter / (N/B).
  lam = timescale.weight_decay_from_timescale(3e-4, 2.5, dataset_size=60_000, batch_size=256)
  assert lam == pytest.approx(1 / (3e-4 * 2.5 * 60_000 / 256), rel=1e-12)
  assert timescale.timescale_from_weight_decay(3e-4, lam, dataset_size=60_000, batch_size=256) == pytest.approx(2.5)
  assert timescale.timescale_iterations(2.5, steps_per_epoch=10) == pytest.approx(25.0)
  # Transfer: a 4x larger dataset at a fixed τ_epoch needs a 4x smaller λ.
  bigger = timescale.weight_decay_from_timescale(3e-4, 2.5, dataset_size=240_000, batch_size=256)
  assert bigger == pytest.approx(lam / 4)


@pytest.mark.parametrize("call, match", [
    (lambda: timescale.weight_decay_from_timescale(0.0, 1.0, steps_per_epoch=10), "learning_rate must be a finite number > 0"),
    (lambda: timescale.weight_decay_from_timescale(1e-3, -1.0, steps_per_epoch=10), "tau_epoch must be a finite number > 0"),
    (lambda: timescale.weight_decay_from_timescale(1e-3, math.inf, steps_per_epoch=10), "tau_epoch must be a finite"),
    (lambda: timescale.timescale_from_weight_decay(1e-3, 0.0, steps_per_epoch=10), "weight_decay must be a finite number > 0"),
    (lambda: timescale.timescale_from_weight_decay(1e-3, 0.1, steps_per_epoch=math.nan), "steps_per_epoch must be a finite"),
    (lambda: timescale.steps_per_epoch(dataset_size=100, batch_size=0), "batch_size must be a finite number > 0"),
    (lambda: timescale.steps_per_epoch(dataset_size=100), r"missing \['batch_size'\]"),
    (lambda: timescale.steps_per_epoch(steps_per_epoch=3, batch_size=10), "not both"),
    (lambda: timescale.steps_per_epoch(steps_per_epoch="3"), "steps_per_epoch must be a finite number > 0"),
])
def test_timescale_rejects_bad_input_naming_the_argument(call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call()
