"""Batch-space preconditioning of wide dense layers against the dense path, and the refused combinations.

Reference: the dense path ``A⁻¹ G S⁻¹`` (itself checked against numpy in test_kfac_curvature_period.py) on the
same states and gradients; the batch-space path never forms ``G``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wd_optax import kfac
from _tol import assert_close_scaled


class Wide(nnx.Module):
  def __init__(self, rngs):
    self.body = kfac.Linear(3, 24, rngs=rngs)     # d_A = 4: the dense path is cheaper
    self.wide = kfac.Linear(24, 24, rngs=rngs)    # d = 25 > 1.5 n = 12: batch space
    self.head = kfac.Linear(24, 2, use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.tanh(self.wide(jnp.tanh(self.body(x)))))


def ce_loss(model, batch):
  logits = model(batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits


def test_batch_space_matches_the_dense_path_with_and_without_statistics():
  rng = np.random.default_rng(0)
  batches = [{"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
              "y": jnp.asarray(rng.integers(0, 2, size=8), jnp.int32)} for _ in range(3)]
  model = Wide(nnx.Rngs(0))
  dense, batch_space = (kfac.scale_by_kfac(1e-2, inverse_every=1, batch_space=b) for b in (False, True))
  params = nnx.state(model, nnx.Param)
  states = [dense.init(params), batch_space.init(params)]
  step = jax.jit(lambda s, g, c, b: (dense, batch_space)[b].update(g, s, None, curvature=c), static_argnums=3)
  for i, (batch, estimate) in enumerate(zip(batches, (True, False, True))):
    _, grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch, mode="fisher",
                                                        key=jax.random.key(i), estimate=estimate, rows=True)
    assert curvature["wide"].inputs.shape == (8, 24) and curvature["wide"].output_grads.shape == (8, 24)
    grads = nnx.as_pure(grads)
    (want, states[0]), (got, states[1]) = step(states[0], grads, curvature, 0), step(states[1], grads, curvature, 1)
    # Another association of the same float32 products through two conditioned damped inverses.
    assert_close_scaled(got, want, c=200, scale="tree", err_msg=f"step {i}")
    assert_close_scaled(states[1].cosine, states[0].cosine, c=200)


def test_batch_space_refuses_what_it_cannot_do_exactly():
  with pytest.raises(ValueError, match='batch_space=True.*decay="l2"'):
    kfac.kfac(1e-2, damping=1e-3, decay="l2", batch_space=True)
  model = Wide(nnx.Rngs(0))
  tx = kfac.scale_by_kfac(1e-2, batch_space=True)
  state = tx.init(nnx.state(model, nnx.Param))
  batch = {"x": jnp.ones((8, 3)), "y": jnp.zeros(8, jnp.int32)}
  _, grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch, mode="empirical")
  with pytest.raises(ValueError, match="rows=True"):
    tx.update(nnx.as_pure(grads), state, None, curvature=curvature)
