"""``kfac``: K-FAC with momentum and damping, decay coupled or decoupled (``wd_optax.kfac.kfac``).

Unlike the first-order families, K-FAC needs more than the gradient: the Kronecker factors of every registered
layer (``wd_optax.kfac.Linear`` / ``Conv``). This family computes them in the step's one forward and backward
pass (:meth:`KFAC.value_and_grad`, through ``wd_optax.kfac.value_grad_and_curvature``), reads its registered
layers from the model (:meth:`KFAC.bind`), and logs the effective damping γ‖W‖² and cos(K-FAC direction,
gradient) of its real optimizer state (:meth:`KFAC.diagnostics`, ``wd_optax.kfac.effective_damping``). The model
must be built with registered layers: ``model.registered_layers=true``.

On a mesh whose ``data`` axis has more than one device (``experiments.train.sharding``), the factor statistics
are all-reduced over ``data`` only (each member's batch is split over it; the ``members`` axis never
communicates), and with ``distributed_inverses`` (the default) the damped inverses are split over the same
devices: each inverts its share of every stack of similar-size factors and the inverses are all-gathered
(``wd_optax.kfac.scale_by_kfac``'s ``inverse_sharding``), so the inverse work per device does not grow with
the data axis. :meth:`KFAC.bind` reads the mesh from the program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from experiments.optimizers import base


@dataclasses.dataclass(frozen=True)
class KFAC(base.OptimizerSpec):
  """``wd_optax.kfac.kfac``: v ← μv + P(g [+ λw]), w ← w − η_t v [− η_t λ w] (Zhang et al. 2019's K-FAC).

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    curvature: ``fisher`` (KFAC-F: targets sampled from the model), ``ggn`` (KFAC-G: Gauss-Newton) or
      ``empirical`` (the true labels' gradients).
    damping: γ > 0.
    momentum: μ (0: none).
    kl_clip: κ of the KL clip (0: none).
    ema: factor averaging.
    inverse_every: steps between damped-inverse refreshes.
    inverse: ``cholesky``, ``eigh`` or ``newton_schulz`` (matmul-only; a vmapped LAPACK inverse inside the
      scanned, vmapped step has deadlocked XLA:CPU).
    decay: ``l2`` (λw preconditioned with the gradient, K-FAC-"l2"), ``decoupled`` (K-FAC-"wd") or
      ``l2+decoupled``: K-FAC-"l2" with λ followed by lr-coupled decoupled decay with ``decoupled_weight_decay``.
    decoupled_weight_decay: λ' of ``decay="l2+decoupled"`` (traced, gated by the decay window like λ).
    distributed_inverses: on a mesh with a ``data`` axis of more than one device, split the inverse work over
      that axis (see the module doc); the inverses equal the undistributed ones up to float32 round-off, so
      this only changes speed. ``false``: every device of ``data`` computes every inverse. On CPU devices
      only ``inverse="newton_schulz"`` is split (LAPACK inverses across simulated CPU devices have deadlocked).
    layers: the registered layers' module paths; ``None``: read from the model when the program is built.
    inverse_sharding: set by :meth:`bind` from the program's mesh (a ``NamedSharding`` over ``data``, or
      ``None``); not a config key.
  """
  NAME = "kfac"
  TRACED = base.OptimizerSpec.TRACED + base.MIXED_TRACED
  GATED = ("weight_decay",) + base.MIXED_TRACED
  SHARED_STEP_ARG = "shared_count"  # keeps the inverse refresh a lax.cond in a vmapped population
  learning_rate: float = dataclasses.field(default=0.03, metadata=base.NONNEGATIVE)
  curvature: str = dataclasses.field(default="fisher", metadata=base.choices("fisher", "ggn", "empirical"))
  damping: float = dataclasses.field(default=1e-3, metadata=base.POSITIVE)
  momentum: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  kl_clip: float = dataclasses.field(default=0.0, metadata=base.NONNEGATIVE)
  ema: float = dataclasses.field(default=0.95, metadata=base.UNIT_OPEN)
  inverse_every: int = 20
  inverse: str = dataclasses.field(default="cholesky", metadata=base.choices("cholesky", "eigh", "newton_schulz"))
  decay: str = dataclasses.field(default="decoupled", metadata=base.choices("l2", "decoupled",
                                                                            base.L2_AND_DECOUPLED))
  decoupled_weight_decay: float = dataclasses.field(default=0.0, metadata=base.NONNEGATIVE)
  distributed_inverses: bool = True
  layers: Any = None
  inverse_sharding: Any = None

  def check(self, where) -> None:
    base.check_decoupled_part(self, where)
    if self.inverse_every < 1:
      raise ValueError(f"{where('inverse_every')} must be an int >= 1, got {self.inverse_every!r}.")
    if self.layers is not None and (not isinstance(self.layers, (list, tuple))
                                    or not all(isinstance(l, str) for l in self.layers)):
      raise ValueError(f"{where('layers')} must be none or a list of module paths, got {self.layers!r}.")
    if self.inverse_sharding is not None and not isinstance(self.inverse_sharding, jax.sharding.NamedSharding):
      raise ValueError(f"{where('inverse_sharding')} is set from the device mesh when the program is built, not in "
                       "a config; set optim.distributed_inverses instead.")

  def bind(self, model, mesh=None) -> "KFAC":
    from wd_optax import kfac  # pylint: disable=g-import-not-at-top  # flax: only where K-FAC is used
    from experiments.train import sharding  # pylint: disable=g-import-not-at-top  # experiments.train imports this
    layers = tuple(kfac.registered_layers(model))
    if not layers:
      raise ValueError("optimizer 'kfac' needs registered layers (wd_optax.kfac.Linear / Conv) in the model: set "
                       "model.registered_layers=true.")
    bound = dataclasses.replace(self, layers=layers) if self.layers is None else self
    # On XLA:CPU only the matmul-only inverse is split: LAPACK inverses (cholesky, eigh) across simulated CPU
    # devices have deadlocked there (docs/mechanisms/kfac.md).
    lapack_on_cpu = self.inverse != "newton_schulz" and mesh is not None and mesh.devices.flat[0].platform == "cpu"
    if mesh is not None and self.distributed_inverses and sharding.data_size(mesh) > 1 and not lapack_on_cpu:
      bound = dataclasses.replace(bound, inverse_sharding=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(sharding.DATA_AXIS)))
    return bound

  def build(self, traced) -> optax.GradientTransformation:
    from wd_optax import kfac  # pylint: disable=g-import-not-at-top
    mixed = self.decay == base.L2_AND_DECOUPLED
    tx = kfac.kfac(traced["learning_rate"], damping=self.damping, weight_decay=traced["weight_decay"],
                   decay="l2" if mixed else self.decay, momentum=self.momentum or None, kl_clip=self.kl_clip or None,
                   ema=self.ema, inverse_every=self.inverse_every, inverse=self.inverse,
                   inverse_sharding=self.inverse_sharding,
                   layers=None if self.layers is None else list(self.layers), mask=self.mask())
    return base.with_decoupled_part(self, tx, traced) if mixed else tx

  def value_and_grad(self, loss_fn, params, batch, key, model):
    """Loss, gradients and the K-FAC factors of the member's model in one forward and backward pass."""
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from wd_optax import kfac  # pylint: disable=g-import-not-at-top
    del loss_fn
    module = model.module(params)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)
    (loss, logits), grads, curvature = kfac.value_grad_and_curvature(model.loss, module, batch,
                                                                    mode=self.curvature, key=key)
    return base.GradResult(loss, logits, model.state(module), nnx.to_pure_dict(grads), {"curvature": curvature})

  def diagnostics(self, opt_state, params) -> dict:
    from wd_optax import kfac  # pylint: disable=g-import-not-at-top
    out = {}
    for layer, d in kfac.effective_damping(opt_state, params).items():
      out[f"gamma_eff/{layer}"] = d.effective_damping
      out[f"cos/{layer}"] = d.cosine
    return out
