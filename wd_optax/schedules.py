"""When the decay acts: schedules that switch a rate on or off during training.

Each function returns an optax schedule (a callable from the step count to a value) that multiplies a
rate, itself a number or any optax schedule, by a gate in ``[0, 1]``. They plug into every rate argument
of wd_optax (``weight_decay=early(5e-4, 1000)``) and compose with optax's own schedules.

The step is the number of updates applied so far, as in optax: the first update sees step 0.

**Step edges.** The steps where a schedule switches (``until_step``, ``from_step``, ``start_step``,
``end_step``) are Python ints, or integer / floating jax or numpy arrays. An array edge may be traced, so the
members of one ``jax.vmap``-ed (or jitted) program can differ in when their decay acts, e.g.
``jax.vmap(lambda t0, t1: window(lam, t0, t1)(step))(starts, ends)``. Concrete edges are checked when the
schedule is made (non-negative, ``end_step >= start_step``); traced ones cannot be and pass through.

References:
  Golatkar, Achille, Soatto. *Time Matters in Regularizing Deep Networks.* NeurIPS 2019.
  Bjorck, Weinberger, Gomes. *Understanding Decoupled and Early Weight Decay.* AAAI 2021,
  arXiv:2012.13841.
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wd_optax import _checks

__all__ = ["early", "late", "window", "StepEdge"]

StepEdge = Union[int, jax.Array, np.ndarray]
"""A step where a schedule switches: a non-negative int, or an integer / floating array (possibly traced)."""


def _check_step(value, argname: str) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"{argname} must be a non-negative int (a step count), got {value!r}.")


def _is_array(value) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic)) and not isinstance(value, (bool, np.bool_))


def _check_edge(value, argname: str) -> None:
  """A step edge: an int >= 0, or an integer / floating array whose concrete entries are >= 0."""
  if not _is_array(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{argname} must be a non-negative int (a step count) or an integer / floating array of "
                       f"step counts, got {value!r}.")
    return
  dtype = value.dtype
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(f"{argname}: an array step edge must have an integer or floating dtype, got {dtype}.")
  if not _checks.is_traced(value):
    concrete = np.asarray(value)
    if not np.all(concrete >= 0):   # also catches NaN
      raise ValueError(f"{argname} must be >= 0 (a step count), got {concrete!r}.")


def _check_order(start, end, start_name: str, end_name: str) -> None:
  if _checks.is_traced(start) or _checks.is_traced(end):
    return
  if not np.all(np.asarray(end) >= np.asarray(start)):
    raise ValueError(f"{end_name} ({np.asarray(end)!r}) must be >= {start_name} ({np.asarray(start)!r}).")


def _rate(value: optax.ScalarOrSchedule, step):
  return value(step) if callable(value) else value


def _ramp_down(step, start, ramp_steps: int):
  """1 before ``start``, then linear to 0 over ``ramp_steps`` steps (a hard switch if 0)."""
  if ramp_steps == 0:
    return (step < start).astype(jnp.float32)
  return jnp.clip(1.0 - (step - start) / ramp_steps, 0.0, 1.0)


def early(value: optax.ScalarOrSchedule, until_step: StepEdge, *, ramp_steps: int = 0) -> optax.Schedule:
  r"""A rate that acts early in training and is switched off at ``until_step``.

  .. math::
    s_t = v_t \cdot \mathrm{clip}\Big(1 - \frac{t - T}{R}, 0, 1\Big), \qquad
    s_t = v_t \cdot [t < T] \ \text{ if } R = 0,

  with :math:`T` = ``until_step`` and :math:`R` = ``ramp_steps``: full value for :math:`t < T`, then a linear
  ramp to zero over the next :math:`R` steps.

  Args:
    value: the rate while it acts; a number or an optax schedule.
    until_step: first step at which the rate starts to go off: an int, or an array (possibly traced, e.g.
      one entry per vmapped member; see the module's *Step edges*).
    ramp_steps: length of the linear ramp down; 0 switches off abruptly.

  Returns:
    An optax schedule.

  Example:
    >>> import wd_optax
    >>> decay = wd_optax.schedules.early(1e-3, until_step=100, ramp_steps=50)
    >>> [round(float(decay(t)), 6) for t in (0, 99, 125, 150)]
    [0.001, 0.001, 0.0005, 0.0]

  References:
    Golatkar et al. 2019; Bjorck et al. 2021 (early decay keeps norms small).
  """
  _checks.check_rate(value, "value")
  _check_edge(until_step, "until_step")
  _check_step(ramp_steps, "ramp_steps")

  def schedule(step):
    step = jnp.asarray(step)
    return _rate(value, step) * _ramp_down(step, until_step, ramp_steps)

  return schedule


def late(value: optax.ScalarOrSchedule, from_step: StepEdge, *, ramp_steps: int = 0) -> optax.Schedule:
  r"""A rate that is off early in training and acts from ``from_step`` on.

  .. math::
    s_t = v_t \cdot \mathrm{clip}\Big(\frac{t - T}{R}, 0, 1\Big), \qquad
    s_t = v_t \cdot [t \ge T] \ \text{ if } R = 0,

  with :math:`T` = ``from_step`` and :math:`R` = ``ramp_steps``: zero before :math:`T`, then a linear ramp up
  that reaches the full value at :math:`T + R`.

  Args:
    value: the rate once it acts; a number or an optax schedule.
    from_step: step at which the rate starts to come on: an int, or an array (possibly traced; see the module's
      *Step edges*).
    ramp_steps: length of the linear ramp up; 0 switches on abruptly.

  Returns:
    An optax schedule.

  Example:
    >>> import wd_optax
    >>> decay = wd_optax.schedules.late(1e-3, from_step=100)
    >>> [round(float(decay(t)), 6) for t in (0, 99, 100, 500)]
    [0.0, 0.0, 0.001, 0.001]

  References:
    Golatkar et al. 2019 (late regularisation does about as little as none); Bjorck et al. 2021.
  """
  _checks.check_rate(value, "value")
  _check_edge(from_step, "from_step")
  _check_step(ramp_steps, "ramp_steps")

  def schedule(step):
    step = jnp.asarray(step)
    return _rate(value, step) * (1.0 - _ramp_down(step, from_step, ramp_steps))

  return schedule


def window(value: optax.ScalarOrSchedule, start_step: StepEdge, end_step: StepEdge) -> optax.Schedule:
  r"""A rate that acts only on the steps ``start_step <= t < end_step``.

  .. math::
    s_t = v_t \cdot [T_0 \le t < T_1],

  with :math:`T_0` = ``start_step`` and :math:`T_1` = ``end_step``; :math:`T_0 = T_1` is an empty window (the
  rate never acts).

  Args:
    value: the rate inside the window; a number or an optax schedule.
    start_step: first step of the window: an int, or an array (possibly traced; see the module's
      *Step edges*).
    end_step: first step after the window; must be >= ``start_step`` (checked where both are concrete).

  Returns:
    An optax schedule. With array edges its value has their (broadcast) shape.

  Example:
    >>> import wd_optax
    >>> decay = wd_optax.schedules.window(1e-3, 10, 20)
    >>> [round(float(decay(t)), 6) for t in (9, 10, 19, 20)]
    [0.0, 0.001, 0.001, 0.0]

    Edges that differ between the members of one vmapped program:

    >>> import jax, jax.numpy as jnp
    >>> gate = lambda t0, t1, step: wd_optax.schedules.window(1.0, t0, t1)(step)
    >>> jax.vmap(gate, in_axes=(0, 0, None))(jnp.array([0, 5]), jnp.array([10, 8]), 6).tolist()
    [1.0, 1.0]
    >>> jax.vmap(gate, in_axes=(0, 0, None))(jnp.array([0, 5]), jnp.array([10, 8]), 9).tolist()
    [1.0, 0.0]

  References:
    Golatkar et al. 2019 (regularisation windows).
  """
  _checks.check_rate(value, "value")
  _check_edge(start_step, "start_step")
  _check_edge(end_step, "end_step")
  _check_order(start_step, end_step, "start_step", "end_step")

  def schedule(step):
    step = jnp.asarray(step)
    inside = (step >= start_step) & (step < end_step)
    return _rate(value, step) * inside.astype(jnp.float32)

  return schedule
