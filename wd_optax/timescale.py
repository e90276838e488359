r"""Weight decay set by its timescale: λ from the EMA timescale τ, so a config can fix τ and transfer it.

With decoupled decay coupled to the learning rate (``optax.adamw``, :func:`wd_optax.adam`), each step
shrinks the weights by :math:`1 - \eta\lambda`, so the weights are an exponential moving average of the
updates over the last :math:`\tau_{\text{iter}} = 1/(\eta\lambda)` iterations. Wang & Aitchison find that
the optimal timescale measured in epochs, :math:`\tau_{\text{epoch}} = \tau_{\text{iter}} / S` with
:math:`S = N / B` iterations per epoch (dataset size :math:`N`, batch size :math:`B`), stays roughly
constant as the model and dataset grow, while the optimal :math:`\lambda` does not:

.. math::
  \tau_{\text{iter}} = \tau_{\text{epoch}}\, S, \qquad
  \lambda = \frac{1}{\eta\, \tau_{\text{iter}}} = \frac{B}{\eta\, \tau_{\text{epoch}}\, N}.

So fix :math:`\tau_{\text{epoch}}` in a config and compute :math:`\lambda` for each learning rate,
dataset and batch size. Iterations per epoch are :math:`N/B` exactly (not rounded up): the timescale
is a continuous quantity. With a learning-rate schedule pass its peak, the :math:`\eta` the paper uses.

Example:
  >>> from wd_optax import timescale
  >>> timescale.weight_decay_from_timescale(1e-3, 0.5, dataset_size=50_000, batch_size=500)
  20.0
  >>> timescale.timescale_from_weight_decay(1e-3, 20.0, steps_per_epoch=100)
  0.5

References:
  Wang & Aitchison. *How to set AdamW's weight decay as you scale model and dataset size.*
  arXiv:2405.13698, 2024.
"""

from __future__ import annotations

from wd_optax import _checks

__all__ = ["steps_per_epoch", "timescale_iterations", "weight_decay_from_timescale",
           "timescale_from_weight_decay"]


def steps_per_epoch(*, steps_per_epoch: float | None = None, dataset_size: float | None = None,
                    batch_size: float | None = None) -> float:
  r"""Iterations per epoch :math:`S`: given directly, or :math:`N / B` from ``dataset_size`` and ``batch_size``.

  Args:
    steps_per_epoch: :math:`S`, a finite number > 0; or leave it ``None`` and give both of the others.
    dataset_size: :math:`N`, the number of training examples.
    batch_size: :math:`B`, examples per iteration.

  Returns:
    :math:`S` as a float.

  Raises:
    ValueError: neither or both forms given, or a value that is not a finite number > 0 (the message
      names the argument).

  Example:
    >>> from wd_optax import timescale
    >>> timescale.steps_per_epoch(dataset_size=60_000, batch_size=128)
    468.75
  """
  return _steps(steps_per_epoch, dataset_size, batch_size)


def _steps(steps: float | None, dataset_size: float | None, batch_size: float | None) -> float:
  given = {"dataset_size": dataset_size, "batch_size": batch_size}
  if steps is not None:
    extra = [k for k, v in given.items() if v is not None]
    if extra:
      raise ValueError(f"give steps_per_epoch or dataset_size and batch_size, not both (also got {extra}).")
    return _checks.check_positive_finite(steps, "steps_per_epoch")
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise ValueError(f"give steps_per_epoch, or both dataset_size and batch_size (missing {missing}).")
  n = _checks.check_positive_finite(dataset_size, "dataset_size")
  b = _checks.check_positive_finite(batch_size, "batch_size")
  return n / b


def timescale_iterations(tau_epoch: float, *, steps_per_epoch: float | None = None,
                         dataset_size: float | None = None, batch_size: float | None = None) -> float:
  r"""The timescale in iterations, :math:`\tau_{\text{iter}} = \tau_{\text{epoch}}\, S`.

  Args:
    tau_epoch: :math:`\tau_{\text{epoch}}`, the timescale in epochs (finite, > 0).
    steps_per_epoch, dataset_size, batch_size: :math:`S`, as for :func:`steps_per_epoch`.

  Returns:
    :math:`\tau_{\text{iter}}` as a float.

  Example:
    >>> from wd_optax import timescale
    >>> timescale.timescale_iterations(2.0, steps_per_epoch=100)
    200.0
  """
  tau = _checks.check_positive_finite(tau_epoch, "tau_epoch")
  return tau * _steps(steps_per_epoch, dataset_size, batch_size)


def weight_decay_from_timescale(learning_rate: float, tau_epoch: float, *, steps_per_epoch: float | None = None,
                                dataset_size: float | None = None, batch_size: float | None = None) -> float:
  r"""The decoupled weight decay :math:`\lambda = 1/(\eta\,\tau_{\text{epoch}}\,S)` of a timescale in epochs.

  For decay coupled to the learning rate (``coupling="lr"``, ``optax.adamw``): the per-step shrink is
  :math:`\eta\lambda = 1/\tau_{\text{iter}}`.

  Args:
    learning_rate: :math:`\eta` (the peak, with a schedule); finite, > 0.
    tau_epoch: :math:`\tau_{\text{epoch}}`; finite, > 0.
    steps_per_epoch, dataset_size, batch_size: :math:`S`, as for :func:`steps_per_epoch`.

  Returns:
    :math:`\lambda` as a float.

  Example:
    >>> from wd_optax import timescale
    >>> timescale.weight_decay_from_timescale(1e-2, 1.0, steps_per_epoch=1000)
    0.1
  """
  lr = _checks.check_positive_finite(learning_rate, "learning_rate")
  return 1.0 / (lr * timescale_iterations(tau_epoch, steps_per_epoch=steps_per_epoch,
                                          dataset_size=dataset_size, batch_size=batch_size))


def timescale_from_weight_decay(learning_rate: float, weight_decay: float, *,
                                steps_per_epoch: float | None = None, dataset_size: float | None = None,
                                batch_size: float | None = None) -> float:
  r"""The timescale in epochs :math:`\tau_{\text{epoch}} = 1/(\eta\lambda S)` of a decoupled weight decay.

  The inverse of :func:`weight_decay_from_timescale`: read :math:`\tau_{\text{epoch}}` off a tuned run, then
  transfer it to another learning rate, dataset or batch size.

  Args:
    learning_rate: :math:`\eta` (the peak, with a schedule); finite, > 0.
    weight_decay: :math:`\lambda`; finite, > 0 (no decay has an infinite timescale).
    steps_per_epoch, dataset_size, batch_size: :math:`S`, as for :func:`steps_per_epoch`.

  Returns:
    :math:`\tau_{\text{epoch}}` as a float.

  Example:
    >>> from wd_optax import timescale
    >>> timescale.timescale_from_weight_decay(1e-2, 0.1, dataset_size=128_000, batch_size=128)
    1.0
  """
  lr = _checks.check_positive_finite(learning_rate, "learning_rate")
  wd = _checks.check_positive_finite(weight_decay, "weight_decay")
  return 1.0 / (lr * wd * _steps(steps_per_epoch, dataset_size, batch_size))
