"""wd_optax.kfac: registered layers, curvature capture, the preconditioner and the optimizer.

Every equivalence is against an independent reference: factors and Kronecker inverses built with numpy
from per-example gradients written out by hand, per-patch loops for convolutions, ``nnx.grad`` for the
gradients, and hand-written update rules for the decay placements.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import wd_optax
from wd_optax import kfac
from _tol import assert_close_scaled


def ce_loss(model, batch):
  logits = model(batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits


class MLP(nnx.Module):
  def __init__(self, sizes, rngs, *, norm=False, plain_head=False):
    self.layers = nnx.List([kfac.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-2], sizes[1:-1])])
    self.norm = nnx.LayerNorm(sizes[-2], rngs=rngs) if norm else None
    head = nnx.Linear if plain_head else kfac.Linear
    self.head = head(sizes[-2], sizes[-1], rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = jnp.tanh(layer(x))
    if self.norm is not None:
      x = self.norm(x)
    return self.head(x)


@functools.lru_cache(maxsize=None)
def curvature_fn(loss_fn, mode):
  """``value_grad_and_curvature`` under one ``nnx.jit`` per (loss, mode): eager dispatch compiles op by op."""
  return nnx.jit(lambda model, batch, key: kfac.value_grad_and_curvature(loss_fn, model, batch, mode=mode, key=key))


def jit_update(tx):
  return jax.jit(lambda grads, state, params, curvature: tx.update(grads, state, params, curvature=curvature))


def classification_batch(n=32, d=5, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
          "y": jnp.asarray(rng.integers(0, classes, size=n), jnp.int32)}


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def kron_precondition(a, s, grad_matrix, gamma, pi_damping=True, locations=1.0):
  """(T A ⊗ S + γ I)^-1 with factored π damping, built as an explicit Kronecker matrix (float64)."""
  a, s, g = (np.asarray(v, np.float64) for v in (a, s, grad_matrix))
  gamma = gamma / locations
  pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(s) / len(s))) if pi_damping else 1.0
  damped = np.kron(a + pi * np.sqrt(gamma) * np.eye(len(a)), s + np.sqrt(gamma) / pi * np.eye(len(s)))
  return np.linalg.solve(damped, g.reshape(-1)).reshape(g.shape) / locations


# ---------------------------------------------------------------------------------------------- layers


def test_layers_behave_like_flax_outside_capture_and_add_no_variables():
  layer = kfac.Linear(3, 2, rngs=nnx.Rngs(0))
  reference = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  conv = kfac.Conv(2, 3, kernel_size=(3, 3), rngs=nnx.Rngs(1))
  conv_reference = nnx.Conv(2, 3, kernel_size=(3, 3), rngs=nnx.Rngs(1))
  x = jnp.arange(12.0).reshape(4, 3)
  images = jnp.arange(50.0).reshape(1, 5, 5, 2) / 50
  before = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(layer)))
  outputs = jax.jit(lambda x, images: (layer(x), reference(x), conv(images), conv_reference(images)))(x, images)
  np.testing.assert_array_equal(outputs[0], outputs[1])
  np.testing.assert_array_equal(outputs[2], outputs[3])
  layer(x)   # eagerly too: no variable may appear
  assert jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(layer))) == before
  assert nnx.state(layer, nnx.Param)["kernel"].get_metadata()["kfac_layer"] == "linear"


def test_layer_called_twice_and_bad_conv_options_raise():
  layer = kfac.Linear(3, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="more than once"):
    kfac.value_grad_and_curvature(lambda m, b: (m(m(b)).sum(), m(m(b))), layer, jnp.ones((2, 3)),
                                  mode="empirical")
  with pytest.raises(ValueError, match="feature_group_count"):
    kfac.Conv(4, 4, kernel_size=3, feature_group_count=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="padding"):
    kfac.Conv(4, 4, kernel_size=3, padding="CIRCULAR", rngs=nnx.Rngs(0))


def test_registered_layers_lists_only_kfac_layers():
  model = MLP([5, 6, 4], nnx.Rngs(0), norm=True, plain_head=True)
  assert kfac.registered_layers(model) == ("layers/0",)


# ------------------------------------------------------------------------------------------- curvature


def test_empirical_factors_and_preconditioned_dense_gradient_match_numpy_kronecker():
  """A single Dense layer: A, S from numpy per-example gradients; the update from an explicit kron inverse."""
  layer = kfac.Linear(5, 4, rngs=nnx.Rngs(0))
  batch = classification_batch()
  gamma = 1e-2
  (_, logits), grads, curvature = curvature_fn(ce_loss, "empirical")(layer, batch, None)

  x = np.asarray(batch["x"], np.float64)
  w, b = np.asarray(layer.kernel[...], np.float64), np.asarray(layer.bias[...], np.float64)
  per_example = softmax(x @ w + b) - np.eye(4)[np.asarray(batch["y"])]   # ∂ℓ_i/∂z_i, no 1/N
  a_bar = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  expected_a = a_bar.T @ a_bar / len(x)
  expected_s = per_example.T @ per_example / len(x)
  assert_close_scaled(curvature[""].a, expected_a, c=100)   # float32 batch reductions vs float64
  assert_close_scaled(curvature[""].s, expected_s, c=100)
  assert_close_scaled(grads["kernel"][...], x.T @ per_example / len(x), c=100)

  g_bar = a_bar.T @ per_example / len(x)
  for pi_damping in (True, False):
    tx = kfac.scale_by_kfac(gamma, pi_damping=pi_damping, layers=[""])
    params = nnx.to_pure_dict(nnx.state(layer, nnx.Param))
    updates, _ = jit_update(tx)(nnx.to_pure_dict(grads), tx.init(params), params, curvature)
    expected = kron_precondition(expected_a, expected_s, g_bar, gamma, pi_damping)
    # c = 2000 (2.4e-4 of the update's scale, as before for its largest entries): two float32 damped
    # inverses (γ = 1e-2, condition ~1e2 each) amplify the round-off.
    assert_close_scaled(updates["kernel"], expected[:-1], c=2000, scale=np.abs(expected).max())
    assert_close_scaled(updates["bias"], expected[-1], c=2000, scale=np.abs(expected).max())


def test_gradients_and_mutable_state_match_nnx_grad():
  class WithBatchNorm(nnx.Module):
    def __init__(self, rngs):
      self.dense = kfac.Linear(5, 6, rngs=rngs)
      self.norm = nnx.BatchNorm(6, rngs=rngs)
      self.head = kfac.Linear(6, 4, rngs=rngs)

    def __call__(self, x):
      return self.head(jax.nn.relu(self.norm(self.dense(x))))

  batch = classification_batch()
  ours, reference = WithBatchNorm(nnx.Rngs(0)), WithBatchNorm(nnx.Rngs(0))
  (loss, _), grads, curvature = curvature_fn(ce_loss, "empirical")(ours, batch, None)
  (ref_loss, _), ref_grads = nnx.jit(nnx.value_and_grad(ce_loss, has_aux=True))(reference, batch)
  # Another compiled program than nnx.value_and_grad: float32 round-off of each array's scale.
  assert_close_scaled(loss, ref_loss, c=16)
  # One scale for the whole gradient: the dense bias sits before a batch norm, so its gradient is 0 up to
  # round-off of the kernels' gradients.
  assert_close_scaled(nnx.to_pure_dict(grads), nnx.to_pure_dict(ref_grads), c=100, scale="tree")
  assert_close_scaled(nnx.to_pure_dict(nnx.state(ours, nnx.BatchStat)),
                      nnx.to_pure_dict(nnx.state(reference, nnx.BatchStat)), c=16)
  assert not np.allclose(ours.norm.mean[...], 0.0)   # the running mean did move
  assert sorted(curvature) == ["dense", "head"]


def _mean_curvature(model, batch, mode, keys):
  @nnx.jit
  def mean(model, keys):
    samples = jax.lax.map(lambda k: kfac.value_grad_and_curvature(ce_loss, model, batch, mode=mode, key=k)[2], keys)
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), samples)
  return mean(model, keys)


def test_sampled_fisher_and_ggn_average_to_their_exact_output_factors():
  """Monte Carlo over keys: "fisher" → E[diag p − p pᵀ] at the logits; "ggn" → E[JᵀJ] for a hidden layer."""
  model = MLP([5, 6, 4], nnx.Rngs(0))
  batch = classification_batch(n=64)
  keys = jax.random.split(jax.random.key(1), 100)
  x = np.asarray(batch["x"], np.float64)
  w0, b0 = np.asarray(model.layers[0].kernel[...]), np.asarray(model.layers[0].bias[...])
  w1, b1 = np.asarray(model.head.kernel[...], np.float64), np.asarray(model.head.bias[...])
  h = np.tanh(x @ w0 + b0)
  p = softmax(h @ w1 + b1)
  fisher = np.mean([np.diag(pi) - np.outer(pi, pi) for pi in p], axis=0)
  derivative = 1 - h ** 2                     # tanh' at the hidden pre-activation
  ggn_hidden = np.mean([np.outer(d, d) * (w1 @ w1.T) for d in derivative], axis=0)

  estimate = _mean_curvature(model, batch, "fisher", keys)
  np.testing.assert_allclose(estimate["head"].s, fisher, atol=0.1 * np.abs(fisher).max())
  estimate = _mean_curvature(model, batch, "ggn", keys)
  np.testing.assert_allclose(estimate["head"].s, np.eye(4), atol=0.08)
  np.testing.assert_allclose(estimate["layers/0"].s, ggn_hidden, atol=0.1 * np.abs(ggn_hidden).max())
  with pytest.raises(ValueError, match="key"):
    kfac.value_grad_and_curvature(ce_loss, model, batch, mode="fisher")
  with pytest.raises(ValueError, match="mode"):
    kfac.value_grad_and_curvature(ce_loss, model, batch, mode="hessian", key=keys[0])


def _numpy_patches(x, kernel_size, strides, padding):
  """Per-location patches in the kernel's (kh, kw, c_in) order, by explicit loops."""
  n, height, width, channels = x.shape
  kh, kw = kernel_size
  if padding == "SAME":
    out_h, out_w = -(-height // strides), -(-width // strides)
    pad_h = max((out_h - 1) * strides + kh - height, 0)
    pad_w = max((out_w - 1) * strides + kw - width, 0)
    x = np.pad(x, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
  else:
    out_h, out_w = (height - kh) // strides + 1, (width - kw) // strides + 1
  rows = []
  for i in range(n):
    for r in range(out_h):
      for c in range(out_w):
        rows.append(x[i, r * strides:r * strides + kh, c * strides:c * strides + kw, :].reshape(-1))
  return np.asarray(rows, np.float64), out_h * out_w


@pytest.mark.parametrize("strides,padding", [(1, "SAME"), (2, "VALID")])
def test_conv_kfc_statistics_equal_direct_per_patch_computation(strides, padding):
  conv = kfac.Conv(2, 3, kernel_size=(3, 3), strides=strides, padding=padding, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2))
  direct = conv(x)
  targets = jax.random.normal(jax.random.key(1), direct.shape)

  def loss_fn(model, batch):
    out = model(batch)
    return 0.5 * jnp.mean(jnp.sum((out - targets) ** 2, axis=(1, 2, 3))), out.reshape(out.shape[0], -1)

  _, grads, curvature = curvature_fn(loss_fn, "empirical")(conv, x, None)
  patches, locations = _numpy_patches(np.asarray(x, np.float64), (3, 3), strides, padding)
  patches = np.concatenate([patches, np.ones((len(patches), 1))], axis=1)
  kernel = np.asarray(conv.kernel[...], np.float64).reshape(-1, 3)
  outputs = patches @ np.concatenate([kernel, np.asarray(conv.bias[...])[None]], axis=0)
  assert_close_scaled(direct, outputs.reshape(direct.shape), c=1000)   # as before (1e-4): XLA's conv vs float64
  # Per-example loss ℓ_n = ½‖out_n − target_n‖², so ∂ℓ_n/∂out_{n,t} = out_{n,t} − target_{n,t}.
  per_location = outputs - np.asarray(targets, np.float64).reshape(-1, 3)
  assert_close_scaled(curvature[""].a, patches.T @ patches / len(patches), c=100)
  # c = 1000 (1.2e-4, as before): the residuals out − target carry the convolution's round-off.
  assert_close_scaled(curvature[""].s, per_location.T @ per_location / len(patches), c=1000)
  assert float(curvature[""].locations) == locations

  gamma = 0.1
  tx = kfac.scale_by_kfac(gamma, layers=[""])
  params = nnx.to_pure_dict(nnx.state(conv, nnx.Param))
  pure_grads = nnx.to_pure_dict(grads)
  updates, _ = jit_update(tx)(pure_grads, tx.init(params), params, curvature)
  g_bar = np.concatenate([np.asarray(pure_grads["kernel"]).reshape(-1, 3), np.asarray(pure_grads["bias"])[None]])
  expected = kron_precondition(patches.T @ patches / len(patches),
                               per_location.T @ per_location / len(patches), g_bar, gamma,
                               locations=locations)
  # c = 5000 (6e-4 of the update's scale, as before for its largest entries): damped float32 inverses of
  # factors that carry the convolution's round-off.
  assert_close_scaled(np.asarray(updates["kernel"]).reshape(-1, 3), expected[:-1], c=5000,
                      scale=np.abs(expected).max())
  assert_close_scaled(updates["bias"], expected[-1], c=5000, scale=np.abs(expected).max())


# ------------------------------------------------------------------------------------- preconditioner


@functools.lru_cache(maxsize=None)
def _cached_tx(items):
  kwargs = dict(items)
  tx = kfac.scale_by_kfac(kwargs.pop("damping", 1e-2), **kwargs)
  return tx, jit_update(tx)


def _setup(model=None, **tx_kwargs):
  """A model, a scale_by_kfac and its jitted update (shared between tests with equal settings), state, grads."""
  model = model or MLP([5, 6, 4], nnx.Rngs(0))
  batch = classification_batch()
  if "layers" in tx_kwargs:
    tx_kwargs["layers"] = tuple(tx_kwargs["layers"])
  tx, update = _cached_tx(tuple(sorted(tx_kwargs.items())))
  params = nnx.state(model, nnx.Param)
  state = tx.init(params)
  (_, _), grads, curvature = curvature_fn(ce_loss, "empirical")(model, batch, None)
  return model, tx, update, nnx.as_pure(params), state, nnx.as_pure(grads), curvature


def test_unregistered_parameters_pass_through_unchanged():
  model = MLP([5, 6, 4], nnx.Rngs(0), norm=True, plain_head=True)
  _, tx, update, params, state, grads, curvature = _setup(model)
  assert sorted(state.factors) == ["layers/0"]
  updates, _ = update(grads, state, params, curvature)
  for path in ("norm", "head"):
    jax.tree.map(np.testing.assert_array_equal, updates[path], grads[path])
  assert not np.allclose(updates["layers"][0]["kernel"], grads["layers"][0]["kernel"])


def test_inverses_recomputed_every_period_inside_one_compilation():
  model, tx, _, params, state, grads, curvature = _setup(inverse_every=2, ema=0.5)
  traces = []

  @jax.jit
  def step(grads, state, params, curvature):
    traces.append(1)
    return tx.update(grads, state, params, curvature=curvature)

  scaled = {k: c._replace(a=c.a * (2.0 + 0.5 * i)) for i, (k, c) in enumerate(curvature.items())}
  _, s1 = step(grads, state, params, curvature)
  _, s2 = step(grads, s1, params, scaled)
  _, s3 = step(grads, s2, params, scaled)
  assert len(traces) == 1
  for layer in s1.inverses:
    np.testing.assert_array_equal(s2.inverses[layer].a, s1.inverses[layer].a)   # count 1: kept
    assert not np.allclose(s3.inverses[layer].a, s2.inverses[layer].a)           # count 2: recomputed
    # EMA: β_1 = min(0.5, 1/2) → the mean of the first two statistics; the first update took the first alone.
    assert_close_scaled(s1.factors[layer].a, curvature[layer].a, c=8)
    assert_close_scaled(s2.factors[layer].a, 0.5 * (curvature[layer].a + scaled[layer].a), c=16)
    expected = kfac.damped_inverses(s3.factors[layer].a, s3.factors[layer].s, jnp.float32(1e-2))
    # c = 256: the same inverse compiled in another program; its condition number (~1e2) amplifies the
    # reordering round-off. The stale inverse (of factors 2-3x smaller) is off by far more.
    assert_close_scaled(s3.inverses[layer].a, expected.a, c=256)


def test_damping_schedule_and_inject_hyperparams():
  schedule = optax.linear_schedule(1e-1, 1e-3, 10)
  model, tx, update, params, state, grads, curvature = _setup(damping=schedule, inverse_every=1,
                                                              layers=["layers/0", "head"])
  _, state = update(grads, state, params, curvature)
  _, state = update(grads, state, params, curvature)
  assert_close_scaled(state.damping, schedule(1), c=8)
  for layer, factors in state.factors.items():
    expected = kfac.damped_inverses(factors.a, factors.s, jnp.float32(schedule(1)))
    assert_close_scaled(state.inverses[layer].s, expected.s, c=256)   # as above: a conditioned inverse

  injected = optax.inject_hyperparams(kfac.scale_by_kfac, static_args=("layers", "inverse_every", "pi_damping"))(
      damping=1e-2, layers=["layers/0", "head"])
  _, _, plain_update, _, plain_state, _, _ = _setup(layers=["layers/0", "head"])
  out, _ = jit_update(injected)(grads, injected.init(params), params, curvature)
  expected, _ = plain_update(grads, plain_state, params, curvature)
  # c = 256: traced vs constant damping inside two damped inverses (condition ~1e2) and their product.
  assert_close_scaled(out, expected, c=256)


def test_bf16_gradients_keep_their_dtype():
  model, tx, update, params, state, grads, curvature = _setup()
  low = jax.tree.map(lambda g: g.astype(jnp.bfloat16), grads)
  updates, _ = update(low, state, params, curvature)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


def test_missing_or_mismatched_curvature_and_bad_arguments_raise():
  model, tx, update, params, state, grads, curvature = _setup()
  with pytest.raises(ValueError, match="needs the curvature"):
    tx.update(grads, state, params)
  with pytest.raises(ValueError, match=r"no curvature for \['head'\]"):
    tx.update(grads, state, params, curvature={"layers/0": curvature["layers/0"]})
  with pytest.raises(ValueError, match=r"unregistered \['extra'\]"):
    tx.update(grads, state, params, curvature={**curvature, "extra": curvature["head"]})
  with pytest.raises(ValueError, match="curvature\\['head'\\] has factors of shapes"):
    tx.update(grads, state, params, curvature={**curvature, "head": curvature["layers/0"]})
  with pytest.raises(ValueError, match="plain arrays"):
    kfac.scale_by_kfac(1e-2).init(params)
  with pytest.raises(ValueError, match="'nothing' names no layer"):
    kfac.scale_by_kfac(1e-2, layers=["nothing"]).init(params)
  with pytest.raises(ValueError, match="damping"):
    kfac.scale_by_kfac(0.0)
  with pytest.raises(ValueError, match="ema"):
    kfac.scale_by_kfac(1e-2, ema=1.0)
  with pytest.raises(ValueError, match="inverse_every"):
    kfac.scale_by_kfac(1e-2, inverse_every=0)
  with pytest.raises(ValueError, match="decay"):
    kfac.kfac(0.1, damping=1e-2, decay="adamw")


def test_kl_clip_scales_the_whole_update_by_nu():
  model = MLP([5, 6, 4], nnx.Rngs(0), norm=True)
  _, plain, plain_update, params, state, grads, curvature = _setup(model)
  lr, kappa = 10.0, 1e-3
  clipped = kfac.scale_by_kfac(1e-2, kl_clip=kappa, learning_rate=lr)
  u, _ = plain_update(grads, state, params, curvature)
  v, _ = jit_update(clipped)(grads, clipped.init(nnx.state(model, nnx.Param)), params, curvature)
  inner = sum(float(np.vdot(a, b)) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(grads)))
  nu = min(1.0, np.sqrt(kappa / (lr ** 2 * inner)))
  assert nu < 0.5
  assert_close_scaled(v, jax.tree.map(lambda a: nu * np.asarray(a, np.float64), u), c=100)


def test_effective_damping_reports_gamma_w2_and_cosine():
  model, tx, update, params, state, grads, curvature = _setup(damping=0.05)
  updates, state = update(grads, state, params, curvature)
  report = kfac.effective_damping((optax.EmptyState(), state), params)
  for layer, path in (("layers/0", ("layers", 0)), ("head", ("head",))):
    sub_u, sub_g, sub_p = updates, grads, params
    for key in path:
      sub_u, sub_g, sub_p = sub_u[key], sub_g[key], sub_p[key]
    u = np.concatenate([np.ravel(sub_u["kernel"]), np.ravel(sub_u["bias"])])
    g = np.concatenate([np.ravel(sub_g["kernel"]), np.ravel(sub_g["bias"])])
    u, g = u.astype(np.float64), g.astype(np.float64)
    # A cosine's scale is 1, not its own size: float32 dot products of length ~30.
    assert_close_scaled(report[layer].cosine, u @ g / np.linalg.norm(u) / np.linalg.norm(g), c=100, scale=1.0)
    assert_close_scaled(report[layer].effective_damping,
                        0.05 * np.sum(np.asarray(sub_p["kernel"], np.float64) ** 2), c=100)
  with pytest.raises(ValueError, match="exactly one"):
    kfac.effective_damping(optax.EmptyState(), params)


# ------------------------------------------------------------------------------------------ optimizer


@pytest.mark.parametrize("decay", ["l2", "decoupled"])
def test_kfac_decay_placements_match_hand_written_rules(decay):
  model, precondition, reference, params, state, grads, curvature = _setup(layers=["layers/0", "head"])
  lr, wd, mu = 0.3, 0.05, 0.9
  tx = kfac.kfac(lr, damping=1e-2, weight_decay=wd, decay=decay, momentum=mu, layers=["layers/0", "head"])
  opt_state = tx.init(params)
  grads2 = jax.tree.map(lambda g: 0.5 * g, grads)
  update = jit_update(tx)
  u1, opt_state = update(grads, opt_state, params, curvature)
  u2, opt_state = update(grads2, opt_state, params, curvature)

  l2 = lambda g: jax.tree.map(lambda gi, w: gi + wd * w, g, params) if decay == "l2" else g
  p1, s = reference(l2(grads), state, params, curvature)
  p2, _ = reference(l2(grads2), s, params, curvature)
  decoupled = (lambda w: lr * wd * w) if decay == "decoupled" else (lambda w: 0.0 * w)
  expected1 = jax.tree.map(lambda p, w: -lr * p - decoupled(w), p1, params)
  expected2 = jax.tree.map(lambda a, b, w: -lr * (mu * a + b) - decoupled(w), p1, p2, params)
  for got, want in ((u1, expected1), (u2, expected2)):
    assert_close_scaled(got, want, c=100)   # our chain vs the hand-written rule, both compiled float32


def test_kfac_with_nnx_optimizer_and_jit_reduces_the_loss():
  model = MLP([5, 8, 4], nnx.Rngs(0), norm=True)
  optimizer = nnx.Optimizer(model, kfac.kfac(0.1, damping=1e-2, weight_decay=1e-3, inverse_every=3,
                                             mask=wd_optax.masks.kernels()), wrt=nnx.Param)
  batch = classification_batch(n=64)

  @nnx.jit
  def train_step(model, optimizer, key):
    (loss, _), grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch, mode="fisher", key=key)
    optimizer.update(model, grads, curvature=curvature)
    return loss

  losses = [float(train_step(model, optimizer, k)) for k in jax.random.split(jax.random.key(0), 10)]
  assert losses[-1] < 0.7 * losses[0]
  assert sorted(kfac.effective_damping(optimizer, nnx.state(model, nnx.Param))) == ["head", "layers/0"]


def test_least_squares_converges_in_a_handful_of_steps_where_sgd_does_not():
  """Linear least squares, ill-conditioned inputs: GGN K-FAC with tiny damping is (nearly) Newton."""
  rng = np.random.default_rng(0)
  n, d, k = 256, 8, 3
  x = rng.normal(size=(n, d)) * np.logspace(0, -2, d)       # condition number of E[xxᵀ] ≈ 1e4
  y = x @ rng.normal(size=(d, k)) + 0.5
  batch = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}

  def mse(model, batch):
    out = model(batch["x"])
    return 0.5 * jnp.mean(jnp.sum((out - batch["y"]) ** 2, axis=-1)), out

  def run(tx, steps, use_kfac):
    model = kfac.Linear(d, k, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, key):
      if use_kfac:
        (loss, _), grads, curvature = kfac.value_grad_and_curvature(mse, model, batch, mode="ggn", key=key)
        optimizer.update(model, grads, curvature=curvature)
      else:
        (loss, _), grads = nnx.value_and_grad(mse, has_aux=True)(model, batch)
        optimizer.update(model, grads)
      return loss

    losses = [float(step(model, optimizer, key)) for key in jax.random.split(jax.random.key(0), steps)]
    return losses[0], float(mse(model, batch)[0])

  first, last_kfac = run(kfac.kfac(1.0, damping=1e-8, momentum=None, inverse_every=1, ema=0.0), 5, True)
  largest = np.linalg.eigvalsh(np.concatenate([x, np.ones((n, 1))], 1).T @ np.concatenate([x, np.ones((n, 1))], 1) / n).max()
  _, last_sgd = run(wd_optax.sgd(1.0 / largest, momentum=None), 5, False)
  assert last_kfac < 1e-4 * first
  assert last_sgd > 1e-2 * first


def test_conv_patches_reproduce_the_convolution_for_other_geometries():
  """patches @ kernel + bias equals the layer's own (XLA) convolution: same padding, order and strides."""
  geometries = [dict(kernel_dilation=2), dict(padding=((1, 0), (2, 1)), strides=(1, 2)),
                dict(input_dilation=2, padding=((1, 1), (0, 1)))]
  convs = [kfac.Conv(2, 3, kernel_size=(3, 2), rngs=nnx.Rngs(0), **options) for options in geometries]
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 2))

  @jax.jit
  def both(x):
    return [(conv._patches(x) @ conv.kernel[...].reshape(-1, 3) + conv.bias[...], conv(x)) for conv in convs]

  for options, (from_patches, direct) in zip(geometries, both(x)):
    assert_close_scaled(from_patches, direct, c=128, err_msg=str(options))   # a matmul vs XLA's conv


@pytest.mark.parametrize("samples", [64, 8])            # 8 < 12: a singular A, as with a small batch
def test_every_inverse_method_equals_numpy_float64(samples):
  rng = np.random.default_rng(0)
  rows = rng.standard_normal((samples, 12)).astype(np.float32)
  a = rows.T @ rows / samples
  s_rows = rng.standard_normal((samples, 5)).astype(np.float32) * 1e-2
  s = s_rows.T @ s_rows / samples
  for damping in (1e-6, 1e-3, 1e-1):
    pi = np.sqrt((np.trace(a) / 12) / (np.trace(s) / 5))
    expected_a = np.linalg.inv(a.astype(np.float64) + pi * np.sqrt(damping) * np.eye(12))
    expected_s = np.linalg.inv(s.astype(np.float64) + np.sqrt(damping) / pi * np.eye(5))
    for method in kfac.INVERSES:
      if method == "newton_schulz" and damping < 1e-3:
        continue                                         # 30 iterations cover condition numbers up to ~1e8 only
      got = kfac.damped_inverses(jnp.asarray(a), jnp.asarray(s), jnp.asarray(damping), inverse=method)
      # c = 2000 (2.4e-4 of the inverse's scale, as before for its largest entries): a float32 inverse with
      # condition numbers up to ~1e4 (singular A, damping 1e-6) loses that much.
      assert_close_scaled(got.a, expected_a, c=2000, err_msg=f"{method} damping={damping}")
      assert_close_scaled(got.s, expected_s, c=2000, err_msg=f"{method} damping={damping}")
  with pytest.raises(ValueError, match="inverse must be one of"):
    kfac.scale_by_kfac(1e-3, inverse="svd")


def test_shared_count_keeps_the_inverse_refresh_a_cond_in_a_vmapped_population():
  """A vmapped population with a per-member count inverts on every step (the cond becomes a select); with the
  common count passed unbatched the refresh stays a ``lax.cond`` and gives the same states as each member
  updated on its own."""
  model, tx, _, params, state, grads, curvature = _setup(inverse_every=2, ema=0.5)
  members = 3
  stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x * (1.0 + 0.25 * i) for i in range(members)]), tree)
  batched = (stack(grads), jax.tree.map(lambda x: jnp.stack([x] * members), state), stack(curvature))

  def population(shared):
    def one(g, s, c, count):
      return tx.update(g, s, params, curvature=c, **({"shared_count": count} if shared else {}))
    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))

  hlo = {shared: population(shared).lower(*batched, jnp.int32(0)).compile().as_text() for shared in (False, True)}
  assert "conditional" not in hlo[False]   # the per-member count: both branches every step
  assert "conditional" in hlo[True]
  g, s, c = batched
  shared_step = population(True)
  for count in range(3):
    out, s_next = shared_step(g, s, c, jnp.int32(count))
    for i in range(members):
      member = lambda tree: jax.tree.map(lambda x: x[i], tree)
      ref_out, ref_state = jax.jit(lambda g, s, c: tx.update(g, s, params, curvature=c))(member(g), member(s),
                                                                                          member(c))
      # c = 256: another compiled program around conditioned inverses (as above).
      assert_close_scaled(member(out), ref_out, c=256, scale="tree")
      assert_close_scaled(member(s_next).inverses, ref_state.inverses, c=256, scale="tree")
    s = s_next
