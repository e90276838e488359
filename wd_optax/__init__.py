"""wd_optax: weight decay as composable Optax gradient transformations.

The package is laid out by the three questions every weight-decay choice answers:

* **where the decay enters the optimizer**: :mod:`wd_optax.coupled` (L2 in the gradient and in Adam's
  buffers) and :mod:`wd_optax.decoupled` (decay applied to the weights after the step, with an explicit
  learning-rate coupling); :mod:`wd_optax.optimizers` bundles them into SGD and Adam;
* **when it acts**: :mod:`wd_optax.schedules` (early, late, windowed decay);
* **which parameters it touches**: :mod:`wd_optax.masks`.

Beside decay: :mod:`wd_optax.projections` fixes weight norms instead of decaying them (FixNorm),
:mod:`wd_optax.kfac` preconditions with K-FAC and damping (it needs flax: ``pip install "wd-optax[kfac]"``;
the rest needs only jax, optax and numpy), :mod:`wd_optax.diagnostics` and :func:`wd_optax.monitor` (from
:mod:`wd_optax.monitoring`, with :func:`~wd_optax.monitoring.unpack`) measure the mechanisms (effective
learning rate, angular update, Jacobian norm, effective damping), and
:mod:`wd_optax.tuning` holds FixNorm's decoupled tuning procedure. Recent refinements of decoupled decay:
cautious decay (``cautious=True`` of :func:`decoupled_decay`), the radial projection of AdamP / SGDP
(:func:`adamp`, :func:`sgdp`), stable weight decay (:mod:`wd_optax.stable`: :func:`adams`, :func:`sgds`)
and decay set by its timescale (:mod:`wd_optax.timescale`).

References:
  Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
  Bjorck, Weinberger, Gomes. *Understanding Decoupled and Early Weight Decay.* AAAI 2021.
  Zhou, Sun, Zhong. *FixNorm: Dissecting Weight Decay for Training Deep Neural Networks.* arXiv:2103.15345.
"""

from wd_optax import diagnostics
from wd_optax import masks
from wd_optax import monitoring
from wd_optax import schedules
from wd_optax import timescale
from wd_optax import tuning
from wd_optax.coupled import AddL2State, add_l2, scale_by_adam_l2
from wd_optax.decoupled import COUPLINGS, DecoupledDecayState, decoupled_decay
from wd_optax.monitoring import MonitorState, monitor
from wd_optax.optimizers import adam, sgd
from wd_optax.projections import FixNormState, RadialProjectionState, adamp, fix_norm, fixnorm, sgdp
from wd_optax.stable import AdamSState, adams, sgds

__version__ = "0.1.0"

# wd_optax.kfac needs flax (its registered layers are NNX modules), an optional dependency: it is imported
# on first use (``wd_optax.kfac.scale_by_kfac`` or ``import wd_optax.kfac``), so ``import wd_optax`` works
# with jax, optax and numpy only.
_LAZY_SUBMODULES = ("kfac",)


def __getattr__(name):
  if name in _LAZY_SUBMODULES:
    import importlib
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "AdamSState",
    "AddL2State",
    "COUPLINGS",
    "DecoupledDecayState",
    "FixNormState",
    "MonitorState",
    "RadialProjectionState",
    "adam",
    "adamp",
    "adams",
    "add_l2",
    "decoupled_decay",
    "diagnostics",
    "fix_norm",
    "fixnorm",
    "masks",
    "monitor",
    "monitoring",
    "scale_by_adam_l2",
    "schedules",
    "sgd",
    "sgdp",
    "sgds",
    "timescale",
    "tuning",
]
