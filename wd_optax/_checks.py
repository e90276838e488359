"""Argument checks that turn bad input into errors naming the argument."""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import numpy as np


def is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def check_rate(value: Any, argname: str, *, allow_none: bool = False, positive: bool = False) -> None:
  """Checks a ``ScalarOrSchedule``: a callable, or a finite number >= 0 (> 0 if ``positive``).

  Traced values (inside ``optax.inject_hyperparams`` under ``jit``) and schedules cannot be checked
  before they are evaluated and pass through.
  """
  if value is None:
    if allow_none:
      return
    raise ValueError(f"{argname} is required, got None.")
  if callable(value) or is_traced(value):
    return
  if isinstance(value, (str, bytes)) or not _is_number_like(value):
    raise TypeError(
        f"{argname} must be a number or an optax schedule (a callable from step to value), "
        f"got {value!r} of type {type(value).__name__}.")
  array = np.asarray(value)
  if array.shape != ():
    raise ValueError(f"{argname} must be a scalar, got an array of shape {array.shape}.")
  number = float(array)
  if not math.isfinite(number):
    raise ValueError(f"{argname} must be finite, got {number}.")
  if positive and number <= 0:
    raise ValueError(f"{argname} must be > 0, got {number}.")
  if number < 0:
    raise ValueError(f"{argname} must be >= 0, got {number}.")


def _is_number_like(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, float, np.number)):
    return True
  return isinstance(value, (np.ndarray, jax.Array)) and np.issubdtype(value.dtype, np.number)


def check_choice(value: Any, argname: str, choices: Iterable[str]) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{argname} must be one of {choices}, got {value!r}.")


def require_params(params: Any, transform: str) -> None:
  if params is None:
    raise ValueError(
        f"{transform} needs the current parameters: call update(updates, state, params) with "
        "params, as optax.add_decayed_weights does.")
