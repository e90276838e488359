"""rotational_equilibrium / rotational_adamw / rotational_sgd and sphere_step / adamh against numpy.

The references are written from the update rules of Kosson et al. 2024 (Algorithm 1, per neuron) and
of the hyperball AdamH (Wen et al. 2025), in float64 numpy, with their own Adam / SGD.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wd_optax
from _tol import assert_close_scaled

KERNELS = wd_optax.masks.kernels()
STEPS = 6


def _params():
  k1, k2 = jax.random.split(jax.random.key(3))
  return {"dense": {"kernel": jax.random.normal(k1, (5, 3)), "bias": jax.random.normal(k2, (3,))}}


def _grads(t):
  k1, k2 = jax.random.split(jax.random.key(100 + t))
  return {"dense": {"kernel": jax.random.normal(k1, (5, 3)), "bias": jax.random.normal(k2, (3,))}}


def _run(tx, params, steps=STEPS, grads=None):
  grads = grads or _grads
  state = tx.init(params)
  for t in range(steps):
    updates, state = tx.update(grads(t), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


class _NumpyAdam:
  def __init__(self, shape, b1, b2, eps):
    self.m, self.v, self.t, self.b1, self.b2, self.eps = np.zeros(shape), np.zeros(shape), 0, b1, b2, eps

  def direction(self, g):
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * g
    self.v = self.b2 * self.v + (1 - self.b2) * g * g
    m_hat, v_hat = self.m / (1 - self.b1 ** self.t), self.v / (1 - self.b2 ** self.t)
    return m_hat / (np.sqrt(v_hat) + self.eps)


def _rotate_columns(w, u, nu, t, eta_r, beta, eps, axis):
  """Kosson et al.'s Algorithm 1 for every neuron w[..., c] (axis: the output-channel axis)."""
  w = np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])
  u = np.moveaxis(u, axis, -1).reshape(w.shape)
  new = np.empty_like(w)
  for c in range(w.shape[1]):
    wc, uc = w[:, c], u[:, c]
    u_perp = uc - (uc @ wc) / (wc @ wc) * wc
    nu[c] = beta * nu[c] + (1 - beta) * (u_perp @ u_perp)
    rms = math.sqrt(nu[c] / (1 - beta ** t))
    moved = wc + eta_r * np.linalg.norm(wc) * u_perp / (rms + eps)
    new[:, c] = moved * np.linalg.norm(wc) / np.linalg.norm(moved)
  return new


def _reference_rotational_adamw(params, lr, wd, b1, b2, eps, beta, steps):
  p = _np(params)
  kernel, bias = p["dense"]["kernel"], p["dense"]["bias"]
  adam_k, adam_b = _NumpyAdam(kernel.shape, b1, b2, eps), _NumpyAdam(bias.shape, b1, b2, eps)
  nu = np.zeros(3)
  eta_r = math.sqrt(2 * lr * wd * (1 - b1) / (1 + b1))
  for t in range(steps):
    g = _np(_grads(t))["dense"]
    u_kernel = -lr * (adam_k.direction(g["kernel"]) + wd * kernel)   # AdamW's step; its radial part is projected out
    kernel = _rotate_columns(kernel, u_kernel, nu, t + 1, eta_r, beta, 1e-8, 1)
    bias = bias - lr * adam_b.direction(g["bias"])          # outside the mask: AdamW without decay
  return kernel, bias


@pytest.mark.parametrize("output_channel", ["last", "first"])
def test_rotational_adamw_matches_numpy_reference(output_channel):
  lr, wd, b1, b2, eps = 3e-2, 0.1, 0.9, 0.99, 1e-8
  params = _params()
  transpose = output_channel == "first"
  if transpose:   # the same neurons stored (out, in), as Equinox does
    flip = lambda tree: {"dense": {"kernel": tree["dense"]["kernel"].T, "bias": tree["dense"]["bias"]}}
    tx = wd_optax.rotational_adamw(lr, wd, b1=b1, b2=b2, eps=eps, output_channel="first", mask=KERNELS)
    got = _run(tx, flip(params), grads=lambda t: flip(_grads(t)))
    kernel, bias = _reference_rotational_adamw(params, lr, wd, b1, b2, eps, 0.9, STEPS)
    got = flip(got)
  else:
    tx = wd_optax.rotational_adamw(lr, wd, b1=b1, b2=b2, eps=eps, mask=KERNELS)
    got = _run(tx, params)
    kernel, bias = _reference_rotational_adamw(params, lr, wd, b1, b2, eps, 0.9, STEPS)
  assert_close_scaled(got["dense"]["kernel"], kernel, c=200)   # float32 vs float64, 6 steps
  assert_close_scaled(got["dense"]["bias"], bias, c=200)
  # The invariant itself: every neuron kept its norm.
  assert_close_scaled(np.linalg.norm(got["dense"]["kernel"], axis=0),
                      np.linalg.norm(params["dense"]["kernel"], axis=0), c=16)


def test_rotational_sgd_first_step_turns_each_neuron_by_arctan_eta_r():
  # Step 1: the RMS is the step's own norm, so every neuron turns by exactly arctan(η_r), η_r = √(2ηλ/(1+μ)).
  lr, wd, mu = 0.1, 5e-3, 0.9
  params = _params()
  tx = wd_optax.rotational_sgd(lr, wd, momentum=mu, mask=KERNELS)
  new = _run(tx, params, steps=1)
  w0, w1 = np.asarray(params["dense"]["kernel"], np.float64), np.asarray(new["dense"]["kernel"], np.float64)
  cos = np.sum(w0 * w1, 0) / np.linalg.norm(w0, axis=0) / np.linalg.norm(w1, axis=0)
  angle = np.arccos(np.clip(cos, -1, 1))
  np.testing.assert_allclose(angle, math.atan(math.sqrt(2 * lr * wd / (1 + mu))), rtol=2e-3)
  # The bias takes SGD's own step, -η g (momentum buffer empty, bias not decayed).
  assert_close_scaled(new["dense"]["bias"], params["dense"]["bias"] - lr * _grads(0)["dense"]["bias"], c=4)


def test_rotational_equilibrium_per_leaf_and_passthrough():
  # per_channel=False rotates the whole matrix (one ν); a 1-d leaf inside the mask passes through.
  lr, wd = 0.05, 0.2
  params = _params()
  inner = optax.sgd(lr)
  tx = wd_optax.rotational_equilibrium(inner, learning_rate=lr, weight_decay=wd, optimizer="sgd",
                                       momentum=0.0, per_channel=False)
  got = _run(tx, params, steps=3)
  w = _np(params)["dense"]["kernel"].reshape(-1, 1)
  nu = np.zeros(1)
  for t in range(3):
    u = -lr * _np(_grads(t))["dense"]["kernel"].reshape(-1, 1)
    w = _rotate_columns(w, u, nu, t + 1, math.sqrt(2 * lr * wd), 0.9, 1e-8, 1)
  assert_close_scaled(got["dense"]["kernel"], w.reshape(5, 3), c=100)
  expected_bias = _np(params)["dense"]["bias"] - lr * sum(_np(_grads(t))["dense"]["bias"] for t in range(3))
  assert_close_scaled(got["dense"]["bias"], expected_bias, c=16)


def test_rotational_equilibrium_zero_neuron_stays_zero_and_errors():
  params = {"kernel": jnp.zeros((4, 2)).at[:, 0].set(1.0)}
  tx = wd_optax.rotational_adamw(1e-2, 0.1)
  updates, _ = jax.jit(tx.update)({"kernel": jnp.ones((4, 2))}, tx.init(params), params)
  assert np.all(np.isfinite(updates["kernel"])) and np.all(np.asarray(updates["kernel"])[:, 1] == 0)
  with pytest.raises(ValueError, match="optimizer must be one of"):
    wd_optax.rotational_equilibrium(optax.sgd(0.1), learning_rate=0.1, weight_decay=0.1, optimizer="lion")
  with pytest.raises(TypeError, match="inner must be an optax.GradientTransformation"):
    wd_optax.rotational_equilibrium(0.1, learning_rate=0.1, weight_decay=0.1)
  with pytest.raises(ValueError, match="output_channel must be one of"):
    wd_optax.rotational_adamw(0.1, output_channel="middle")
  with pytest.raises(ValueError, match="momentum must be in"):
    wd_optax.rotational_sgd(0.1, momentum=1.0)


def _reference_adamh(params, lr, b1, b2, eps, steps):
  p = _np(params)["dense"]
  kernel, bias = p["kernel"], p["bias"]
  adam_k, adam_b = _NumpyAdam(kernel.shape, b1, b2, eps), _NumpyAdam(bias.shape, b1, b2, eps)
  radius = np.linalg.norm(kernel)
  for t in range(steps):
    g = _np(_grads(t))["dense"]
    d = adam_k.direction(g["kernel"])
    moved = kernel - lr * radius * d / np.linalg.norm(d)
    kernel = radius * moved / np.linalg.norm(moved)
    bias = bias - lr * adam_b.direction(g["bias"])
  return kernel, bias


def test_adamh_matches_numpy_reference_and_keeps_frobenius_norm():
  lr, b1, b2, eps = 2e-2, 0.9, 0.95, 1e-8
  params = _params()
  got = _run(wd_optax.adamh(lr, b1=b1, b2=b2, eps=eps), params)
  kernel, bias = _reference_adamh(params, lr, b1, b2, eps, STEPS)
  assert_close_scaled(got["dense"]["kernel"], kernel, c=200)
  assert_close_scaled(got["dense"]["bias"], bias, c=100)
  assert float(jnp.linalg.norm(got["dense"]["kernel"])) == pytest.approx(
      float(jnp.linalg.norm(params["dense"]["kernel"])), rel=1e-6)


def test_sphere_step_masked_out_matrix_takes_plain_step_and_zero_direction_is_no_step():
  params = _params()
  tx = wd_optax.sphere_step(0.1, mask={"dense": {"kernel": False, "bias": True}})
  d = _grads(0)
  updates, _ = tx.update(d, tx.init(params), params)
  assert_close_scaled(updates["dense"]["kernel"], -0.1 * d["dense"]["kernel"], c=2)
  tx = wd_optax.sphere_step(0.1)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)
  np.testing.assert_array_equal(updates["dense"]["kernel"], 0.0)
