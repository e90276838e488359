"""Generalisation measures: scale invariance under a BatchNorm-followed layer, closed-form references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wd_optax.diagnostics import sharpness as ds
from _tol import assert_close_scaled


def _bn_net_loss(params, batch):
  """Dense -> batch-statistics normalisation (no learnable scale) -> ReLU -> Dense -> softmax CE."""
  x, labels = batch
  h = x @ params["hidden"]["kernel"]
  h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-10)
  logits = jax.nn.relu(h) @ params["head"]["kernel"] + params["head"]["bias"]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


@pytest.fixture(scope="module")
def bn_case():
  rng = np.random.default_rng(0)
  params = {
      "hidden": {"kernel": jnp.asarray(rng.normal(size=(5, 8)) / np.sqrt(5), jnp.float32)},
      "head": {"kernel": jnp.asarray(rng.normal(size=(8, 3)) / np.sqrt(8), jnp.float32),
               "bias": jnp.zeros(3)},
  }
  x = jnp.asarray(rng.normal(size=(32, 5)), jnp.float32)
  batch = (x, jnp.argmax(x[:, :3] + 0.5 * x[:, 3:4], axis=1))
  # Sharpness is meant for trained weights: a few hundred full-batch GD steps reach a region where
  # the loss curves upwards in random directions.
  grad = jax.grad(_bn_net_loss)
  params = jax.jit(lambda p: jax.lax.fori_loop(
      0, 300, lambda _, q: jax.tree.map(lambda w, g: w - 0.3 * g, q, grad(q, batch)), p))(params)
  scaled = {**params, "hidden": {"kernel": 10.0 * params["hidden"]["kernel"]}}
  return params, scaled, batch


def _differ(a, b):
  return abs(float(a.value) - float(b.value)) > 3 * float(np.hypot(a.stderr, b.stderr))


def test_scale_invariant_sharpness_ignores_rescaling_a_bn_layer_and_raw_measures_do_not(bn_case):
  params, scaled, batch = bn_case
  assert_close_scaled(_bn_net_loss(scaled, batch), _bn_net_loss(params, batch), c=100)
  key = jax.random.key(1)

  @jax.jit
  def measures(p):
    return (ds.scale_invariant_sharpness(_bn_net_loss, p, batch, key, radius=0.1, num_samples=16),
            ds.scale_invariant_sharpness(_bn_net_loss, p, batch, key, radius=0.1, num_samples=16,
                                         per_output_channel=True),
            ds.fixed_radius_sharpness(_bn_net_loss, p, batch, key, radius=1.0, num_samples=16,
                                      mask={"hidden": True, "head": False}),
            ds.sum_of_squared_norms(p),
            ds.spectral_norm_product(p))

  base, base_channel, base_fixed, base_sq, base_spec = measures(params)
  new, new_channel, new_fixed, new_sq, new_spec = measures(scaled)
  for before, after in [(base, new), (base_channel, new_channel)]:
    # The same key draws the same directions, so the values agree far inside the sampling error.
    assert float(before.stderr) > 0
    assert abs(float(after.value) - float(before.value)) < 0.01 * float(before.stderr)
  # The raw measures move although the function is the same.
  assert _differ(base_fixed, new_fixed)
  hidden_sq = float(np.sum(np.asarray(params["hidden"]["kernel"]) ** 2))
  # A difference of two float32 sums: its round-off is of the scale of the larger sum, new_sq.
  assert_close_scaled(new_sq - base_sq, 99.0 * hidden_sq, c=1000, scale=float(new_sq))
  np.testing.assert_allclose(new_spec / base_spec, 10.0, rtol=1e-4)

  # Deterministic for a fixed key (same compiled function, same inputs, same bits).
  again = measures(params)
  assert float(again[0].value) == float(base.value)

  # Per-channel perturbations are also invariant to rescaling single filters; per-leaf ones are not.
  filter_scales = jnp.asarray([0.1, 1.0, 3.0, 10.0, 0.5, 2.0, 1.0, 7.0])
  rescaled = {**params, "hidden": {"kernel": params["hidden"]["kernel"] * filter_scales}}
  assert_close_scaled(_bn_net_loss(rescaled, batch), _bn_net_loss(params, batch), c=100)
  per_leaf, per_channel, *_ = measures(rescaled)
  assert abs(float(per_channel.value) - float(base_channel.value)) < 0.01 * float(base_channel.stderr)
  assert _differ(per_leaf, base)


def test_sharpness_matches_closed_form_on_a_quadratic():
  # L(w) = ½ Σ_ℓ w_ℓᵀ A_ℓ w_ℓ. With ε uniform on a sphere of radius r in d dims, E⟨A w, ε⟩ = 0 and
  # E εᵀAε = r² tr(A)/d, so E[L(w+ε) − L(w)] = ½ r² tr(A)/d per perturbed block.
  rng = np.random.default_rng(3)
  blocks = {name: rng.normal(size=(d, d)) for name, d in (("a", 6), ("b", 4))}
  blocks = {name: m @ m.T / m.shape[0] for name, m in blocks.items()}
  params = {name: jnp.asarray(rng.normal(size=m.shape[0]), jnp.float32) for name, m in blocks.items()}
  matrices = {name: jnp.asarray(m, jnp.float32) for name, m in blocks.items()}
  loss = lambda p, _: sum(0.5 * p[n] @ matrices[n] @ p[n] for n in p)
  relative = jax.jit(functools.partial(ds.scale_invariant_sharpness, loss, batch=None, radius=0.2,
                                       num_samples=512))(params, key=jax.random.key(0))
  expected_relative = sum(
      0.5 * (0.2 * np.linalg.norm(params[n])) ** 2 * np.trace(blocks[n]) / blocks[n].shape[0]
      for n in blocks)
  assert abs(float(relative.value) - expected_relative) < 3 * float(relative.stderr)
  fixed = jax.jit(functools.partial(ds.fixed_radius_sharpness, loss, batch=None, radius=0.3,
                                    num_samples=512, mask={"a": True, "b": False}))(
                                        params, key=jax.random.key(0))
  expected_fixed = 0.5 * 0.3 ** 2 * np.trace(blocks["a"]) / 6
  assert abs(float(fixed.value) - expected_fixed) < 3 * float(fixed.stderr)


def test_sharpness_argument_errors(bn_case):
  params, _, batch = bn_case
  with pytest.raises(ValueError, match="radius"):
    ds.scale_invariant_sharpness(_bn_net_loss, params, batch, jax.random.key(0), radius=0.0)
  with pytest.raises(ValueError, match="num_samples"):
    ds.fixed_radius_sharpness(_bn_net_loss, params, batch, jax.random.key(0), num_samples=1)
  with pytest.raises(ValueError, match="head/bias"):
    ds.scale_invariant_sharpness(_bn_net_loss, params, batch, jax.random.key(0),
                                 mask={"hidden": True, "head": {"kernel": True}})


def test_zero_leaf_gets_no_perturbation_and_no_nan():
  params = {"w": jnp.zeros(3), "v": jnp.array([1.0, -2.0])}
  loss = lambda p, _: jnp.sum(p["w"] ** 2) + jnp.sum(jnp.sin(p["v"]))
  @jax.jit
  def measure(p):
    return (ds.scale_invariant_sharpness(loss, p, None, jax.random.key(0), num_samples=4),
            ds.scale_invariant_sharpness(loss, p, None, jax.random.key(0), num_samples=4,
                                         mask={"w": True, "v": False}))

  result, only_zero = measure(params)
  assert np.isfinite(float(result.value)) and np.isfinite(float(result.stderr))
  assert float(only_zero.value) == 0.0


def test_raw_norm_measures_match_numpy():
  rng = np.random.default_rng(4)
  params = {
      "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
               "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
      "dense": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)},
  }
  np64 = jax.tree.map(lambda w: np.asarray(w, np.float64), params)
  assert_close_scaled(ds.sum_of_squared_norms(params),
                      sum(np.sum(w ** 2) for w in jax.tree.leaves(np64)), c=100)
  assert_close_scaled(ds.sum_of_squared_norms(params, mask={"conv": False, "dense": True}),
                      np.sum(np64["dense"]["kernel"] ** 2), c=100)
  top = lambda w: np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)[0]
  expected = top(np64["conv"]["kernel"]) * top(np64["dense"]["kernel"])  # the bias is skipped
  np.testing.assert_allclose(jax.jit(ds.spectral_norm_product)(params), expected, rtol=1e-4)
  assert float(ds.spectral_norm_product({"w": jnp.zeros((3, 2))})) == 0.0
