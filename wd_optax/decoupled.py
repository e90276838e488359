"""Where the decay enters, part 2: decoupled decay, applied to the weights after the optimizer's step.

The decay never touches the gradient statistics; only its coupling to the learning rate differs between
the conventions in use (docs/papers.md §1), and that coupling is an explicit argument here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wd_optax import _checks
from wd_optax import _tree

__all__ = ["decoupled_decay", "DecoupledDecayState", "COUPLINGS"]

COUPLINGS = ("lr", "schedule", "independent", "corrected")


class DecoupledDecayState(NamedTuple):
  """State of :func:`decoupled_decay` when a rate it reads is a schedule."""
  count: jax.Array  # shape=(), dtype=int32: updates applied so far, the schedules' step.


def _resolve_peak(coupling: str, learning_rate: Any, peak_learning_rate: Any) -> Any:
  if coupling in ("lr", "schedule", "corrected") and learning_rate is None:
    raise ValueError(
        f"decoupled_decay(coupling={coupling!r}) needs learning_rate: its decay factor is computed "
        "from the learning rate η_t.")
  if coupling not in ("schedule", "corrected"):
    return None
  if peak_learning_rate is not None:
    return peak_learning_rate
  if callable(learning_rate):
    raise ValueError(
        f"decoupled_decay(coupling={coupling!r}) with a learning-rate schedule needs "
        "peak_learning_rate (η_max): it cannot be read off a schedule.")
  if not _checks.is_traced(learning_rate) and not float(learning_rate) > 0:
    raise ValueError(
        f"decoupled_decay(coupling={coupling!r}) divides by the peak learning rate, which defaults to "
        f"the constant learning_rate; it must be > 0, got {learning_rate!r}.")
  return learning_rate


def decoupled_decay(
    weight_decay: optax.ScalarOrSchedule,
    *,
    coupling: str = "lr",
    learning_rate: optax.ScalarOrSchedule | None = None,
    peak_learning_rate: float | None = None,
    mask: Any = None,
    cautious: bool = False,
) -> optax.GradientTransformation:
  r"""Decoupled weight decay with an explicit coupling to the learning rate.

  Put it last in a chain, after the learning-rate scaling; it adds the decay step to the update:

  .. math::
    u_t \leftarrow u_t - c_t\, \lambda_t\, w_t, \qquad
    c_t = \begin{cases}
      \eta_t & \texttt{"lr"} \text{ (optax.adamw, PyTorch)} \\
      \eta_t / \eta_{\max} & \texttt{"schedule"} \text{ (Loshchilov \& Hutter, Alg. 2)} \\
      1 & \texttt{"independent"} \\
      \eta_t^2 / \eta_{\max} & \texttt{"corrected"} \text{ (AdamC)}
    \end{cases}

  :math:`\eta_{\max}` is ``peak_learning_rate``, or the learning rate itself when it is a constant.
  With ``"independent"``, :math:`\lambda` is the per-step shrink factor of the weights.

  ``cautious=True`` is cautious weight decay (Chen et al.): a coordinate is decayed only where the
  optimizer's descent direction :math:`d_t` (the step is :math:`-\eta_t d_t`) and the weight agree in sign,

  .. math::
    u_t \leftarrow u_t - c_t\, \lambda_t\, \mathbb{1}[d_t \odot w_t \ge 0] \odot w_t,

  with any coupling. The sign of :math:`d_t` is read off the incoming update :math:`u_t = -\eta_t d_t`,
  so a coordinate whose step is exactly 0 (e.g. :math:`\eta_t = 0`) counts as agreeing.

  Args:
    weight_decay: :math:`\lambda`, a finite number >= 0 or an optax schedule.
    coupling: one of ``"lr"``, ``"schedule"``, ``"independent"``, ``"corrected"``.
    learning_rate: :math:`\eta`, the same number or schedule the chain scales by; required except for
      ``"independent"``.
    peak_learning_rate: :math:`\eta_{\max}`; required for ``"schedule"`` and ``"corrected"`` when
      ``learning_rate`` is a schedule. Inside ``optax.inject_hyperparams`` the learning rate arrives
      as a number each step, so pass ``peak_learning_rate`` there too.
    mask: which leaves to decay (see :mod:`wd_optax.masks`).
    cautious: decay only the coordinates where the step and the weight agree in sign (see above).

  Returns:
    An ``optax.GradientTransformation``; its ``update`` requires ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100)
    >>> tx = optax.chain(
    ...     optax.scale_by_adam(),
    ...     optax.scale_by_learning_rate(schedule),
    ...     wd_optax.decoupled_decay(0.1, coupling="schedule", learning_rate=schedule,
    ...                              peak_learning_rate=1e-3))
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    >>> updates["w"].tolist()   # η_0 = 0: no step and no decay at the first update
    [-0.0, -0.0, -0.0]

  References:
    Loshchilov & Hutter. *Decoupled Weight Decay Regularization.* ICLR 2019.
    Bjorck, Weinberger, Gomes. *Understanding Decoupled and Early Weight Decay.* AAAI 2021.
    AdamC: arXiv:2506.02285.
    Chen, Li, Liang, Liu, et al. *Cautious Weight Decay.* arXiv:2510.12402, 2025.
  """
  _checks.check_flag(cautious, "cautious")
  _checks.check_rate(weight_decay, "weight_decay")
  _checks.check_choice(coupling, "coupling", COUPLINGS)
  _checks.check_rate(learning_rate, "learning_rate", allow_none=True)
  _checks.check_rate(peak_learning_rate, "peak_learning_rate", allow_none=True, positive=True)
  peak = _resolve_peak(coupling, learning_rate, peak_learning_rate)
  reads_lr = coupling != "independent"
  scheduled = callable(weight_decay) or (reads_lr and callable(learning_rate))

  def coefficient(count):
    decay = weight_decay(count) if callable(weight_decay) else weight_decay
    if coupling == "independent":
      return decay
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    if coupling == "lr":
      return lr * decay
    if coupling == "schedule":
      return lr / peak * decay
    return lr * lr / peak * decay

  def init_fn(params):
    if not _checks.is_params_placeholder(params):
      resolved = _tree.resolve_mask(mask, params)
      _checks.check_decayed_leaves(params, resolved, "decoupled_decay")
    if scheduled:
      return DecoupledDecayState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "decoupled_decay")
    _checks.check_updates_match_params(updates, params, "decoupled_decay")
    resolved = _tree.resolve_mask(mask, params)
    _checks.check_decayed_leaves(params, resolved, "decoupled_decay", updates)
    if scheduled:
      coef = coefficient(state.count)
      state = DecoupledDecayState(count=optax.safe_increment(state.count))
    else:
      coef = coefficient(None)
    def decay(u, w):
      step = coef * w
      if cautious:
        # The step u is -η·d: d and w agree in sign where u·w <= 0.
        step = jnp.where(u * w <= 0, step, jnp.zeros_like(step))
      return u - step.astype(u.dtype)

    updates = _tree.map_with_path(
        lambda path, u, w: decay(u, w) if resolved(path) else u, updates, params)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
