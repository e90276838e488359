"""jacobian_norm and gauss_newton_norm against explicit Jacobians built with jax.jacrev."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from wd_optax.diagnostics import jacobian as dj
from _tol import assert_close_scaled


def _mlp_params(sizes, *, bias=True, seed=0):
  rng = np.random.default_rng(seed)
  params = {}
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    layer = {"kernel": jnp.asarray(rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in), jnp.float32)}
    if bias:
      layer["bias"] = jnp.asarray(0.1 * rng.normal(size=fan_out), jnp.float32)
    params[f"layer{i}"] = layer
  return params


def _mlp(params, x, activation=jnp.tanh):
  names = sorted(params)
  for i, name in enumerate(names):
    x = x @ params[name]["kernel"] + params[name].get("bias", 0.0)
    if i < len(names) - 1:
      x = activation(x)
  return x


@pytest.fixture(scope="module")
def mlp_case():
  """A small tanh MLP, a batch, and the exact mean ‖J_x‖²_F from per-example jacrev Jacobians."""
  params = _mlp_params([4, 8, 3])
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
  per_example = jax.jit(jax.vmap(jax.jacrev(lambda xi: _mlp(params, xi[None])[0])))(x)
  exact = float(np.mean(np.sum(np.asarray(per_example, np.float64) ** 2, axis=(1, 2))))
  return params, x, exact


def test_rademacher_jacobian_norm_agrees_with_jacrev_within_standard_error(mlp_case):
  params, x, exact = mlp_case
  estimate = jax.jit(functools.partial(dj.jacobian_norm, _mlp, num_probes=64, probe="rademacher"))(
      params, x, jax.random.key(3))
  assert 0 < float(estimate.stderr) < 0.1 * exact  # the check below is not vacuous
  assert abs(float(estimate.value) - exact) < 3 * float(estimate.stderr)


def test_gaussian_jacobian_norm_agrees_with_jacrev_and_standard_error_is_calibrated(mlp_case):
  # Over independent keys: each estimate lies within 3 standard errors of the jacrev value about as
  # often as a normal would, the spread of the estimates matches the reported standard error, and
  # their mean converges on the exact value (unbiasedness).
  params, x, exact = mlp_case
  keys = jax.random.split(jax.random.key(0), 200)
  estimates = jax.jit(jax.vmap(lambda k: dj.jacobian_norm(_mlp, params, x, k, num_probes=16)))(keys)
  values = np.asarray(estimates.value, np.float64)
  within = np.abs(values - exact) < 3 * np.asarray(estimates.stderr)
  assert within.mean() >= 0.95
  assert 0.7 < np.std(values, ddof=1) / np.mean(np.asarray(estimates.stderr)) < 1.4
  assert abs(values.mean() - exact) < 3 * np.std(values, ddof=1) / np.sqrt(len(values))


def test_jacobian_norm_is_per_example_even_if_the_model_mixes_the_batch():
  rng = np.random.default_rng(2)
  w = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
  mixing = lambda p, x: x @ p["w"] + jnp.mean(x, axis=0, keepdims=True) @ p["v"]
  x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  # On a batch of one the mean is the example itself, so each example's Jacobian is (w + v)ᵀ.
  exact = float(np.sum((np.asarray(w) + np.asarray(v)) ** 2))
  estimate = jax.jit(functools.partial(dj.jacobian_norm, mixing, num_probes=2000))(
      {"w": w, "v": v}, x, jax.random.key(0))
  assert abs(float(estimate.value) - exact) < 3 * float(estimate.stderr)


def test_jacobian_norm_argument_errors():
  params = _mlp_params([2, 2])
  with pytest.raises(ValueError, match="num_probes"):
    dj.jacobian_norm(_mlp, params, jnp.ones((2, 2)), jax.random.key(0), num_probes=1)
  with pytest.raises(ValueError, match="probe"):
    dj.jacobian_norm(_mlp, params, jnp.ones((2, 2)), jax.random.key(0), probe="sphere")
  with pytest.raises(ValueError, match="scalar"):
    dj.jacobian_norm(_mlp, params, jnp.float32(1.0), jax.random.key(0))


def _explicit_gauss_newton(apply_fn, params, x, keep=lambda path: True):
  flat, unravel = ravel_pytree(params)
  jac = jax.jit(jax.jacrev(lambda f: apply_fn(unravel(f), x)))(flat)  # (n, k, P)
  jac = np.asarray(jac, np.float64).reshape(x.shape[0], -1, flat.size)
  gauss_newton = np.einsum("nkp,nkq->pq", jac, jac) / x.shape[0]
  masked, _ = ravel_pytree(jax.tree_util.tree_map_with_path(
      lambda p, w: w if keep(jax.tree_util.keystr(p)) else jnp.zeros_like(w), params))
  direction = np.asarray(masked, np.float64)
  return float(direction @ gauss_newton @ direction)


def test_gauss_newton_norm_matches_explicit_matrix():
  params = _mlp_params([3, 4, 2])
  x = jnp.asarray(np.random.default_rng(4).normal(size=(5, 3)), jnp.float32)
  got = jax.jit(functools.partial(dj.gauss_newton_norm, _mlp))(params, x)
  assert_close_scaled(got, _explicit_gauss_newton(_mlp, params, x), c=100)   # a sum of squares: its own scale
  kernel_mask = jax.tree_util.tree_map_with_path(lambda p, _: "kernel" in str(p[-1]), params)
  kernels_only = jax.jit(functools.partial(dj.gauss_newton_norm, _mlp, mask=kernel_mask))(params, x)
  expected = _explicit_gauss_newton(_mlp, params, x, keep=lambda path: "kernel" in path)
  assert_close_scaled(kernels_only, expected, c=100)
  assert not np.isclose(float(kernels_only), float(got), rtol=1e-3)


def test_gauss_newton_norm_of_bias_free_relu_net_is_depth_squared_output_norm():
  # f is positively homogeneous of degree D+1 = 3 in w, so J_w w = 3 f(x) (Zhang et al. §4.2).
  params = _mlp_params([3, 5, 4, 2], bias=False)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(7, 3)), jnp.float32)
  relu_net = functools.partial(_mlp, activation=jax.nn.relu)
  outputs = np.asarray(relu_net(params, x), np.float64)
  expected = 9.0 * np.mean(np.sum(outputs ** 2, axis=1))
  got = jax.jit(functools.partial(dj.gauss_newton_norm, relu_net))(params, x)
  assert_close_scaled(got, expected, c=100)
