"""K-FAC as a plain optax transform, with explicitly registered layers.

Zhang et al.'s second and third mechanisms of weight decay (docs/papers.md §4–5) live in K-FAC. This package
captures the curvature of explicitly registered layers and preconditions with it inside an ordinary
``optax`` chain, so every decay transform of :mod:`wd_optax` composes with it:

* :class:`Linear`, :class:`Conv`: drop-in ``nnx.Linear`` / ``nnx.Conv`` that record their input second
  moment and output gradient inside ``nnx.capture``. Parameters outside them (norm scales, embeddings,
  plain flax layers) pass through the preconditioner unchanged.
* :func:`value_grad_and_curvature`: loss, gradients and per-layer factors for the true Fisher
  (``"fisher"``), the empirical Fisher (``"empirical"``) or the Gauss-Newton matrix with an identity output
  Hessian (``"ggn"``). ``estimate=`` skips the statistics on steps that do not need them (e.g.
  every 10 steps, as Zhang et al.); :func:`curvature_every` compiles such a step as one program
  (``lax.cond``) or two (with and without statistics).
* :func:`scale_by_kfac`: the preconditioner; :func:`kfac`: the full optimizer with the decay placed as
  ``"l2"`` or ``"decoupled"``; :func:`effective_damping`: per-layer :math:`\\gamma\\|w\\|^2` and
  :math:`\\cos(\\text{K-FAC direction}, \\text{gradient})`.

A training step::

  @nnx.jit
  def train_step(model, optimizer, batch, key):
    (loss, logits), grads, curvature = kfac.value_grad_and_curvature(
        loss_fn, model, batch, mode="fisher", key=key)
    optimizer.update(model, grads, curvature=curvature)
    return loss

References:
  Martens & Grosse. *Optimizing Neural Networks with Kronecker-factored Approximate Curvature.* ICML 2015.
  Grosse & Martens. *A Kronecker-factored Approximate Fisher Matrix for Convolution Layers.* ICML 2016.
  Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
"""

try:
  import flax.nnx  # noqa: F401  (the registered layers are NNX modules)
except ModuleNotFoundError as e:  # exercised in subprocesses by tests/test_packaging.py
  if e.name not in ("flax", "flax.nnx"):
    raise  # flax is installed but something it needs is not: its own error says what
  raise ImportError(
      "wd_optax.kfac needs flax (its registered layers are Flax NNX modules), an optional dependency of "
      'wd_optax: install it with `pip install "wd-optax[kfac]"`. The rest of wd_optax works without it.'
  ) from e

from wd_optax.kfac._curvature import (MODES, PROGRAMS, Curvature, LayerCurvature, curvature_every,
                                      value_grad_and_curvature)
from wd_optax.kfac._layers import (Conv, KfacInputStats, KfacOutputPerturbation, Linear,
                                   registered_layers)
from wd_optax.kfac._optimizer import DECAYS, kfac
from wd_optax.kfac._preconditioner import (INVERSES, KfacFactors, LayerDamping, ScaleByKfacState,
                                           damped_inverses, effective_damping, scale_by_kfac)

__all__ = [
    "Conv",
    "Curvature",
    "DECAYS",
    "INVERSES",
    "KfacFactors",
    "KfacInputStats",
    "KfacOutputPerturbation",
    "LayerCurvature",
    "LayerDamping",
    "Linear",
    "MODES",
    "PROGRAMS",
    "ScaleByKfacState",
    "curvature_every",
    "damped_inverses",
    "effective_damping",
    "kfac",
    "registered_layers",
    "scale_by_kfac",
    "value_grad_and_curvature",
]
