"""Weight norms, effective learning rate, angular update, equilibrium angle, flatten_by_path."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wd_optax.diagnostics import norms as dn
from _tol import assert_close_scaled


def _params():
  rng = np.random.default_rng(0)
  return {
      "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
               "bias": jnp.zeros(4)},
      "head": {"kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.bfloat16)},
  }


def test_weight_norms_match_numpy_per_leaf_and_per_channel():
  params = _params()
  norms = dn.weight_norms(params)
  per_channel = dn.weight_norms(params, per_output_channel=True)
  for path, w in [("conv/kernel", params["conv"]["kernel"]), ("head/kernel", params["head"]["kernel"])]:
    w64 = np.asarray(w, np.float64)
    flat = dn.flatten_by_path(norms)
    assert_close_scaled(flat[path], np.linalg.norm(w64), c=32)   # float32 sums of up to 72 squares
    assert flat[path].dtype == jnp.float32
    assert_close_scaled(dn.flatten_by_path(per_channel)[path],
                        np.sqrt((w64 ** 2).reshape(-1, w64.shape[-1]).sum(0)), c=32)
  # A zero bias has norm exactly 0, never NaN.
  assert float(norms["conv"]["bias"]) == 0.0


def test_mask_leaves_none_and_flatten_skips_them():
  params = _params()
  norms = dn.weight_norms(params, mask={"conv": {"kernel": True, "bias": False}, "head": False})
  assert norms["conv"]["bias"] is None and norms["head"]["kernel"] is None
  assert list(dn.flatten_by_path(norms, prefix="norm")) == ["norm/conv/kernel"]
  with pytest.raises(ValueError, match="head/kernel"):
    dn.weight_norms(params, mask={"conv": True})


def test_nnx_state_paths_match_dict_paths():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  flat = dn.flatten_by_path(dn.weight_norms(state))
  assert set(flat) == {"kernel", "bias"}
  assert_close_scaled(flat["kernel"], np.linalg.norm(np.asarray(model.kernel[...], np.float64)), c=32)


def test_two_step_sgd_example_by_hand():
  # A scale-invariant direction under SGD with lr 1: w0 = (1, 0); gradients orthogonal to w.
  # w1 = w0 - (0, -1) = (1, 1); w2 = w1 - (1, -1) = (0, 2). Each step turns w by π/4 and the
  # squared norm grows by η²‖g‖²: 1 → 2 → 4, so η_eff = η/‖w‖² = 1, 1/2, 1/4 and η/‖w‖ = 1, 1/√2, 1/2.
  eta = 1.0
  w0 = {"w": jnp.array([1.0, 0.0])}
  w1 = optax.apply_updates(w0, {"w": -eta * jnp.array([0.0, -1.0])})
  w2 = optax.apply_updates(w1, {"w": -eta * jnp.array([1.0, -1.0])})
  for w, sgd, adam in [(w0, 1.0, 1.0), (w1, 0.5, 1 / math.sqrt(2)), (w2, 0.25, 0.5)]:
    np.testing.assert_allclose(dn.effective_learning_rate(eta, w)["w"], sgd, rtol=1e-6)
    np.testing.assert_allclose(dn.effective_learning_rate(eta, w, optimizer="adam")["w"], adam, rtol=1e-6)
  np.testing.assert_allclose(dn.angular_update(w0, w1)["w"], math.pi / 4, rtol=1e-6)
  np.testing.assert_allclose(dn.angular_update(w1, w2)["w"], math.pi / 4, rtol=1e-6)
  np.testing.assert_allclose(dn.angular_update(w0, w2)["w"], math.pi / 2, rtol=1e-6)


def test_effective_learning_rate_schedule_zero_norm_and_errors():
  params = {"w": jnp.array([0.0, 2.0]), "zero": jnp.zeros(3), "tiny": jnp.full(2, 1e-18)}
  schedule = optax.linear_schedule(1.0, 0.0, 10)
  rates = dn.effective_learning_rate(schedule, params, step=5)
  np.testing.assert_allclose(rates["w"], 0.5 / 4.0, rtol=1e-6)
  assert float(rates["zero"]) == 0.0  # documented convention: no direction, no angular step
  np.testing.assert_allclose(rates["tiny"], 0.5 / 2e-36, rtol=1e-5)
  # η/‖w‖² beyond float32 range is clipped to the largest finite float32, not inf.
  huge = dn.effective_learning_rate(1e3, params)["tiny"]
  assert float(huge) == float(jnp.finfo(jnp.float32).max)
  with pytest.raises(ValueError, match="step"):
    dn.effective_learning_rate(schedule, params)
  with pytest.raises(ValueError, match="optimizer"):
    dn.effective_learning_rate(0.1, params, optimizer="rmsprop")
  with pytest.raises(ValueError, match="learning_rate"):
    dn.effective_learning_rate(-0.1, params)
  per_channel = dn.effective_learning_rate(
      1.0, {"k": jnp.array([[3.0, 0.0], [4.0, 0.0]])}, per_output_channel=True)
  np.testing.assert_allclose(per_channel["k"], [1 / 25, 0.0], rtol=1e-6)


def test_angular_update_accurate_near_zero_and_pi():
  rng = np.random.default_rng(1)
  a = rng.normal(size=64)
  ortho = rng.normal(size=64)
  ortho -= ortho @ a / (a @ a) * a
  ortho /= np.linalg.norm(ortho)
  for theta in [1e-5, 1e-3, 0.3, math.pi - 1e-3]:
    b = 3.7 * (math.cos(theta) * a / np.linalg.norm(a) + math.sin(theta) * ortho)
    a32, b32 = np.float32(a), np.float32(b)
    # Reference from the float32 inputs in float64, via the component of b orthogonal to a
    # (no cancellation at small angles): θ = atan2(‖b⊥‖, ⟨a, b⟩/‖a‖).
    a64, b64 = np.float64(a32), np.float64(b32)
    b_perp = b64 - (a64 @ b64) / (a64 @ a64) * a64
    reference = math.atan2(np.linalg.norm(b_perp), a64 @ b64 / np.linalg.norm(a64))
    got = dn.angular_update({"w": jnp.asarray(a32)}, {"w": jnp.asarray(b32)})["w"]
    np.testing.assert_allclose(got, reference, rtol=1e-3, atol=5e-7)
    if theta == 1e-5:  # arccos of a float32 cosine is off by far more at this angle
      cos32 = np.float32(a32 @ b32) / np.float32(np.linalg.norm(a32) * np.linalg.norm(b32))
      assert abs(np.arccos(np.clip(cos32, -1, 1)) - reference) > 10 * abs(float(got) - reference)
  zero = {"w": jnp.zeros(3)}
  some = {"w": jnp.array([1.0, 2.0, 3.0])}
  for old, new in [(zero, some), (some, zero), (zero, zero)]:
    assert float(dn.angular_update(old, new)["w"]) == 0.0
  np.testing.assert_allclose(dn.angular_update(some, {"w": -some["w"]})["w"], math.pi, rtol=1e-6)
  per_channel = dn.angular_update({"k": jnp.array([[1.0, 1.0], [0.0, 0.0]])},
                                  {"k": jnp.array([[1.0, 0.0], [1.0, 0.0]])}, per_output_channel=True)
  np.testing.assert_allclose(per_channel["k"], [math.pi / 4, 0.0], atol=1e-6)


def test_angular_update_rejects_mismatched_trees():
  with pytest.raises(ValueError, match="'b'"):
    dn.angular_update({"a": jnp.ones(2), "b": jnp.ones(2)}, {"a": jnp.ones(2), "c": jnp.ones(2)})
  with pytest.raises(ValueError, match="'a'.*shape"):
    dn.angular_update({"a": jnp.ones(2)}, {"a": jnp.ones(3)})


def test_functions_are_jittable_and_agree_with_eager():
  params = _params()
  new = jax.tree.map(lambda w: w * 1.01 + 0.01, params)

  @jax.jit
  def all_measures(lr, old, new):
    return (dn.weight_norms(old, per_output_channel=True),
            dn.effective_learning_rate(lr, old, optimizer="adam"),
            dn.angular_update(old, new),
            dn.equilibrium_angular_update(lr, 1e-3, 0.9))

  jitted = all_measures(0.1, params, new)
  eager = (dn.weight_norms(params, per_output_channel=True),
           dn.effective_learning_rate(0.1, params, optimizer="adam"),
           dn.angular_update(params, new), dn.equilibrium_angular_update(0.1, 1e-3, 0.9))
  assert_close_scaled(jitted, eager, c=100)   # jit vs eager: float32 round-off of each leaf's scale
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jitted))


@pytest.mark.parametrize("eta,lam,mu", [(0.1, 2e-3, 0.9), (0.1, 2e-2, 0.0)])
def test_equilibrium_angle_matches_simulated_sgd_on_sphere(eta, lam, mu):
  # Independent check of the prediction: heavy-ball SGD with L2 on a scale-invariant leaf, whose
  # gradient is orthogonal to w and scales as 1/‖w‖, settles at the predicted per-step angle.
  rng = np.random.default_rng(0)
  w = rng.normal(size=500)
  velocity = np.zeros_like(w)
  angles = []
  for _ in range(2000):
    g = rng.normal(size=w.size)
    g -= g @ w / (w @ w) * w
    g /= np.linalg.norm(w)
    velocity = mu * velocity + g + lam * w
    new = w - eta * velocity
    angles.append(np.arccos(np.clip(new @ w / np.linalg.norm(new) / np.linalg.norm(w), -1, 1)))
    w = new
  predicted = float(dn.equilibrium_angular_update(eta, lam, momentum=mu))
  np.testing.assert_allclose(np.mean(angles[-500:]), predicted, rtol=0.03)


def test_equilibrium_angle_formula_and_errors():
  np.testing.assert_allclose(dn.equilibrium_angular_update(0.2, 0.01, 0.0), math.sqrt(0.004), rtol=1e-6)
  grid = dn.equilibrium_angular_update(jnp.array([0.1, 0.4]), 1e-2, 0.5)
  np.testing.assert_allclose(grid, np.sqrt(2 * np.array([0.1, 0.4]) * 1e-2 / 1.5), rtol=1e-6)
  with pytest.raises(ValueError, match="momentum"):
    dn.equilibrium_angular_update(0.1, 1e-3, 1.0)
  with pytest.raises(ValueError, match="weight_decay"):
    dn.equilibrium_angular_update(0.1, -1e-3)
