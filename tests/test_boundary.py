"""cross_boundary_risk: hand-computed margins, and a brute-force search for prediction flips."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wd_optax.diagnostics.boundary import cross_boundary_risk

# Margins (true logit minus best other): 2.0, 0.5, 0.0 (tie), -1.0, 1.0.
_LOGITS = np.array([[3.0, 1.0, 0.0],
                    [0.0, 2.0, 2.5],
                    [1.0, 1.0, -4.0],
                    [0.0, 1.0, -1.0],
                    [-2.0, -2.0, -1.0]], np.float32)
_LABELS = np.array([0, 2, 0, 0, 2])


def test_hand_computed_margins_give_the_risk_at_each_epsilon_and_norm():
  assert float(cross_boundary_risk(_LOGITS, _LABELS)) == pytest.approx(2 / 5)  # the tie counts
  # l2: threshold sqrt(2)*eps. eps=0.4 -> 0.566 catches 0.5; eps=0.8 -> 1.13 catches 1.0.
  assert float(cross_boundary_risk(_LOGITS, _LABELS, epsilon=0.4)) == pytest.approx(3 / 5)
  assert float(cross_boundary_risk(_LOGITS, _LABELS, epsilon=0.8)) == pytest.approx(4 / 5)
  # l1: threshold eps; linf: threshold 2 eps.
  assert float(cross_boundary_risk(_LOGITS, _LABELS, epsilon=0.6, norm=1)) == pytest.approx(3 / 5)
  assert float(cross_boundary_risk(_LOGITS, _LABELS, epsilon=0.6, norm=math.inf)) == pytest.approx(4 / 5)
  assert float(cross_boundary_risk(_LOGITS, _LABELS, epsilon=1.0, norm=math.inf)) == pytest.approx(1.0)


def test_epsilon_curve_where_mask_batch_dims_and_jit():
  curve = cross_boundary_risk(_LOGITS, _LABELS, epsilon=np.array([0.0, 0.4, 0.8, 2.0]))
  np.testing.assert_allclose(curve, [0.4, 0.6, 0.8, 1.0], rtol=1e-6)
  # Dropping the tie and the misclassified sample leaves margins 2.0, 0.5, 1.0.
  where = np.array([True, True, False, False, True])
  assert float(cross_boundary_risk(_LOGITS, _LABELS, epsilon=0.4, where=where)) == pytest.approx(1 / 3)
  assert float(cross_boundary_risk(_LOGITS, _LABELS, where=np.zeros(5, bool))) == 0.0
  # Leading batch dimensions are flattened.
  stacked = cross_boundary_risk(np.stack([_LOGITS, _LOGITS]), np.stack([_LABELS, _LABELS]), epsilon=0.4)
  assert float(stacked) == pytest.approx(3 / 5)
  jitted = jax.jit(lambda z, y, e: cross_boundary_risk(z, y, epsilon=e))
  assert float(jitted(_LOGITS, _LABELS, 0.8)) == pytest.approx(4 / 5)


def test_scaling_logits_lowers_the_risk_at_fixed_epsilon():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(400, 10)).astype(np.float32)
  labels = rng.integers(0, 10, size=400)
  risks = [float(cross_boundary_risk(c * logits, labels, epsilon=0.5)) for c in (0.5, 1.0, 2.0, 8.0)]
  assert all(a > b for a, b in zip(risks, risks[1:]))
  # At epsilon = 0 it is the error rate, which scaling does not change.
  error = float(np.mean(np.argmax(logits, -1) != labels))
  assert float(cross_boundary_risk(8.0 * logits, labels)) == pytest.approx(error)


@pytest.mark.parametrize("norm", [1, 2, math.inf])
def test_matches_a_brute_force_search_for_a_flipping_perturbation(norm):
  """Independent of the margin formula: sample perturbations in the norm ball and look for a flip."""
  rng = np.random.default_rng(1)
  num, classes, eps = 60, 3, 0.5
  logits = rng.normal(scale=0.8, size=(num, classes))
  labels = rng.integers(0, classes, size=num)
  # Candidate perturbations on the ball's boundary: random directions plus the ball's vertices and
  # axis-pair directions, where the worst case of a linear objective lies for these norms.
  directions = [rng.normal(size=(20000, classes))]
  for i in range(classes):
    for j in range(classes):
      if i != j:
        d = np.zeros(classes)
        d[i], d[j] = 1.0, -1.0
        directions.append(d[None])
  signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * classes)).reshape(classes, -1).T
  directions.append(signs)
  directions = np.concatenate(directions)
  ord_ = np.inf if norm == math.inf else norm
  deltas = eps * directions / np.linalg.norm(directions, ord=ord_, axis=1, keepdims=True)

  flips = []
  margins = []
  for z, y in zip(logits, labels):
    perturbed = z[None] + deltas
    others = np.delete(perturbed, y, axis=1)
    flips.append(bool(np.any(perturbed[:, y] <= others.max(axis=1))) or z[y] <= np.delete(z, y).max())
    margins.append(z[y] - np.delete(z, y).max())
  flips, margins = np.array(flips), np.array(margins)
  constant = {1: 1.0, 2: math.sqrt(2.0), math.inf: 2.0}[norm]
  # The sampled search can only under-find flips right at the boundary; compare away from it.
  clear = np.abs(margins - constant * eps) > 0.05
  assert clear.sum() > 40
  predicted = np.asarray(margins <= constant * eps)
  np.testing.assert_array_equal(predicted[clear], flips[clear])
  assert float(cross_boundary_risk(logits.astype(np.float32), labels, epsilon=eps, norm=norm)) == \
      pytest.approx(predicted.mean())


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="labels must have shape"):
    cross_boundary_risk(_LOGITS, _LABELS[:3])
  with pytest.raises(ValueError, match="K >= 2"):
    cross_boundary_risk(np.ones((4, 1)), np.zeros(4, int))
  with pytest.raises(ValueError, match="integer class indices"):
    cross_boundary_risk(_LOGITS, _LABELS.astype(np.float32))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    cross_boundary_risk(_LOGITS, np.array([0, 1, 2, 3, 0]))
  with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
    cross_boundary_risk(_LOGITS, _LABELS, epsilon=-0.1)
  with pytest.raises(ValueError, match="norm must be 1, 2 or math.inf"):
    cross_boundary_risk(_LOGITS, _LABELS, norm=3)
  with pytest.raises(ValueError, match="where must have the shape"):
    cross_boundary_risk(_LOGITS, _LABELS, where=np.ones(3, bool))
