"""Equilibrium diagnostics: the formulas by hand, and the predictions against a trained scale-invariant layer.

The toy problem: one linear layer whose every output is standardised over the batch (BatchNorm without
affine), so each neuron (column of the kernel) is exactly scale-invariant; fresh random inputs and labels
every step, so the gradients are the uncorrelated noise of the random-walk model the predictions assume.
Trained with SGD+momentum (L2 in the momentum) and with AdamW for 600 steps (12 or more time constants
of the norm's approach, 1/(4ηλ/(1−μ)) = 50 and 1/(2ηλ) = 50 steps), then averaged over the last 300
steps and 8 neurons.

Tolerances: the measured values landed within 0.3% (SGD angle), 0.7% (AdamW angle), 0.5% (SGD norm),
1.3% (‖g‖/‖w‖) and 5.3% (AdamW norm) of the predictions. The predictions are first order in the angle
(θ² ≈ 1e-3) and exact only in expectation; the window's noise is ~1% (2400 correlated samples of a
quantity with ~20% spread); AdamW's norm formula also assumes E[(m̂/√v̂)²] per entry equals its
random-walk value, which a β₂ = 0.99 second moment that lags the shrinking gradient misses by a few
percent. So 5% for angles, SGD norm and ratio, 10% for AdamW's norm: wrong by a factor (a missing 1+μ
is 38%, a missing (1−β₁)/(1+β₁) 77%) still fails.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wd_optax
from wd_optax import diagnostics as dg

D, K, B, STEPS, WINDOW = 64, 8, 32, 600, 300


def test_formulas_by_hand():
  np.testing.assert_allclose(dg.equilibrium_angular_update(0.02, 0.5, 0.9, optimizer="adamw"),
                             math.sqrt(2 * 0.01 * 0.1 / 1.9), rtol=1e-6)
  norms = dg.equilibrium_norm(0.02, 0.5, {"w": jnp.ones((64, 8)), "b": jnp.ones(8)}, per_output_channel=True,
                              mask={"w": True, "b": False})
  assert norms["b"] is None
  np.testing.assert_allclose(norms["w"], np.full(8, math.sqrt(0.02 * 64 / 1.0)), rtol=1e-6)
  np.testing.assert_allclose(dg.equilibrium_norm(0.02, 0.5, {"w": jnp.ones((64, 8))})["w"],
                             math.sqrt(0.02 * 512 / 1.0), rtol=1e-6)
  w = {"w": jnp.array([[3.0, 0.0], [4.0, 2.0]])}
  g = {"w": jnp.array([[1.0, 0.0], [0.0, 0.5]])}
  # SGD: (η ‖g‖²‖w‖² / (2λ(1−μ)))^(1/4) per column.
  expected = [(0.1 * 1.0 * 25.0 / (2 * 0.01 * 0.1)) ** 0.25, (0.1 * 0.25 * 4.0 / (2 * 0.01 * 0.1)) ** 0.25]
  np.testing.assert_allclose(dg.equilibrium_norm(0.1, 0.01, w, optimizer="sgd", momentum=0.9, grads=g,
                                                 per_output_channel=True)["w"], expected, rtol=1e-6)
  np.testing.assert_allclose(dg.gradient_to_weight_ratio(g, w, per_output_channel=True)["w"], [0.2, 0.25],
                             rtol=1e-6)
  np.testing.assert_allclose(dg.gradient_to_weight_ratio(g, w, output_channel="first",
                                                         per_output_channel=True)["w"],
                             [1 / 3, 0.5 / math.sqrt(20)], rtol=1e-6)
  assert float(dg.gradient_to_weight_ratio({"w": jnp.ones(2)}, {"w": jnp.zeros(2)})["w"]) == 0.0
  np.testing.assert_allclose(dg.equilibrium_gradient_to_weight_ratio(0.05, 0.01, 0.9),
                             math.sqrt(2 * 0.01 * 0.1 / 0.05), rtol=1e-6)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="needs grads"):
    dg.equilibrium_norm(0.1, 0.01, {"w": jnp.ones((2, 2))}, optimizer="sgd")
  with pytest.raises(ValueError, match="optimizer must be one of"):
    dg.equilibrium_angular_update(0.1, 0.01, optimizer="lion")
  with pytest.raises(ValueError, match="weight_decay must be > 0"):
    dg.equilibrium_norm(0.1, 0.0, {"w": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match="'w' has shape"):
    dg.gradient_to_weight_ratio({"w": jnp.ones(3)}, {"w": jnp.ones(2)})
  with pytest.raises(ValueError, match="missing \\['weight_decay'\\]"):
    wd_optax.monitor(equilibrium=dict(optimizer="sgd", learning_rate=0.1))
  with pytest.raises(ValueError, match="equilibrium\\['optimizer'\\]"):
    wd_optax.monitor(equilibrium=dict(optimizer="adam", learning_rate=0.1, weight_decay=0.1))


def _loss(params, x, y):
  z = x @ params["w"]
  z = (z - z.mean(0)) / jnp.sqrt(z.var(0) + 1e-8)   # per-neuron standardisation: scale-invariant columns
  return optax.softmax_cross_entropy_with_integer_labels(2.0 * z, y).mean()


def _train(tx):
  """STEPS steps on fresh random data; per step: per-neuron angles, norms, ‖g‖/‖w‖, ‖g‖²‖w‖², and the state."""
  params = {"w": jax.random.normal(jax.random.key(0), (D, K)) / math.sqrt(D)}

  def step(carry, key):
    params, state = carry
    kx, ky = jax.random.split(key)
    x, y = jax.random.normal(kx, (B, D)), jax.random.randint(ky, (B,), 0, K)
    grads = jax.grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    measured = (dg.angular_update(params, new, per_output_channel=True)["w"],
                jnp.linalg.norm(new["w"], axis=0),
                dg.gradient_to_weight_ratio(grads, params, per_output_channel=True)["w"],
                jnp.sum(grads["w"] ** 2, 0) * jnp.sum(params["w"] ** 2, 0))
    return (new, state), (measured, state)

  keys = jax.random.split(jax.random.key(1), STEPS)
  _, (measured, states) = jax.jit(lambda c, k: jax.lax.scan(step, c, k))((params, tx.init(params)), keys)
  return [np.asarray(m)[-WINDOW:] for m in measured], states


def _rms(x):
  return float(np.sqrt(np.mean(np.square(x))))


def test_sgd_momentum_reaches_predicted_angle_norm_and_gradient_ratio():
  eta, lam, mu = 0.05, 0.01, 0.9
  tx = optax.chain(wd_optax.sgd(eta, momentum=mu, weight_decay=lam, decay="l2"),
                   wd_optax.monitor(equilibrium=dict(optimizer="sgd", learning_rate=eta, weight_decay=lam,
                                                     momentum=mu)))
  (angles, norms, ratios, unit_grad_sq), states = _train(tx)
  predicted = float(dg.equilibrium_angular_update(eta, lam, mu))
  np.testing.assert_allclose(_rms(angles), predicted, rtol=0.05)
  # The norm from the measured gradient at unit norm, ‖g̃‖² = ‖g‖²‖w‖², averaged over the window.
  np.testing.assert_allclose(np.mean(norms), (eta * np.mean(unit_grad_sq) / (2 * lam * (1 - mu))) ** 0.25,
                             rtol=0.05)
  np.testing.assert_allclose(_rms(ratios), float(dg.equilibrium_gradient_to_weight_ratio(eta, lam, mu)),
                             rtol=0.05)
  # The monitor logs the prediction beside its own (whole-leaf) measurement, which agrees as well.
  monitor_state = states[1]
  np.testing.assert_allclose(np.asarray(monitor_state.predicted_angular_update["w"]), predicted, rtol=1e-6)
  np.testing.assert_allclose(_rms(np.asarray(monitor_state.angular_update["w"])[-WINDOW:]), predicted,
                             rtol=0.05)
  assert monitor_state.predicted_norm is None


def test_adamw_reaches_predicted_angle_and_norm():
  eta, lam, b1 = 0.02, 0.5, 0.9
  tx = optax.chain(optax.adamw(eta, b1=b1, b2=0.99, weight_decay=lam),
                   wd_optax.monitor(packed=True, equilibrium=dict(optimizer="adamw", learning_rate=eta,
                                                                  weight_decay=lam, momentum=b1)))
  (angles, norms, _, _), states = _train(tx)
  predicted = float(dg.equilibrium_angular_update(eta, lam, b1, optimizer="adamw"))
  np.testing.assert_allclose(_rms(angles), predicted, rtol=0.05)
  per_neuron = dg.equilibrium_norm(eta, lam, {"w": jnp.ones((D, K))}, per_output_channel=True)["w"]
  np.testing.assert_allclose(np.mean(norms), float(per_neuron[0]), rtol=0.10)
  monitor_state = states[1]
  # Packed: one entry per measured leaf; the whole leaf's predicted norm is √(η·D·K/(2λ)).
  np.testing.assert_allclose(np.asarray(monitor_state.predicted_norm)[-1], math.sqrt(eta * D * K / (2 * lam)),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(monitor_state.count)[-1], STEPS)
