"""The first K-FAC update of a 3-layer MLP agrees with kfac-jax 0.0.8.

``tests/data/kfac_jax_reference.npz`` was written by ``tools/kfac_jax_reference.py`` in its own
environment (jax 0.9.1, flax 0.12.6, kfac-jax 0.0.8; the command is in that script's docstring): the
inputs, labels, initial parameters and kfac-jax's first update with the empirical Fisher, inverses on
the first step, no momentum, no adaptive anything.

Convention: kfac-jax's ``"fisher_empirical"`` mode divides the output-gradient statistics by the batch
size once more than the per-example definition (see the comment in its
``curvature_estimator/block_diagonal.py``), so its :math:`S` is ours divided by :math:`N`. With
:math:`F_{ours} = N F_{kfac\\text{-}jax}`, :math:`(F_{ours} + N\\gamma I)^{-1} = (F_{kfac\\text{-}jax} + \\gamma I)^{-1}/N`
exactly, also for the π-split damping (π scales by :math:`1/\\sqrt N`). So we run damping
:math:`N\\gamma` and learning rate :math:`N\\eta` to get the same step.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from wd_optax import kfac
from _tol import assert_close_scaled

REFERENCE = pathlib.Path(__file__).parent / "data" / "kfac_jax_reference.npz"


class MLP(nnx.Module):
  def __init__(self, sizes, rngs):
    self.layers = nnx.List([kfac.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jnp.tanh(x)
    return x


def ce_loss(model, batch):
  logits = model(batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits


def test_first_update_matches_kfac_jax_with_the_empirical_fisher():
  ref = np.load(REFERENCE)
  depth = 3
  sizes = [ref["param_kernel_0"].shape[0]] + [ref[f"param_kernel_{i}"].shape[1] for i in range(depth)]
  model = MLP(sizes, nnx.Rngs(0))
  for i, layer in enumerate(model.layers):
    layer.kernel[...] = jnp.asarray(ref[f"param_kernel_{i}"])
    layer.bias[...] = jnp.asarray(ref[f"param_bias_{i}"])
  batch = {"x": jnp.asarray(ref["x"]), "y": jnp.asarray(ref["y"])}
  n = batch["x"].shape[0]
  tx = kfac.kfac(n * float(ref["learning_rate"]), damping=n * float(ref["damping"]), momentum=None,
                 inverse_every=1)

  @nnx.jit
  def step(model):
    (loss, _), grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch, mode="empirical")
    params = nnx.state(model, nnx.Param)
    updates, _ = tx.update(nnx.as_pure(grads), tx.init(params), nnx.as_pure(params), curvature=curvature)
    return loss, updates

  loss, updates = step(model)
  assert_close_scaled(loss, ref["loss"], c=16)   # kfac-jax's float32 loss, computed by another program
  for i in range(depth):
    for name in ("kernel", "bias"):
      ours, theirs = np.asarray(updates["layers"][i][name]), ref[f"update_{name}_{i}"]
      relative = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
      assert relative < 1e-4, f"layers/{i}/{name}: relative error {relative:.2e}"
