"""Hyperparameter search that exploits FixNorm's decoupling, and the baselines to compare it with.

With weight decay, the learning rate η and the decay λ interact: the scale-invariant weights settle
where η_eff = η/‖w‖² balances λ, so both must be tuned jointly on a grid. FixNorm (Zhou, Sun & Zhong,
arXiv:2103.15345) fixes the norms instead, which separates the two roles: the learning-rate schedule
alone sets the effective step of the scale-invariant weights, and the classifier norm alone sets the
logit scale. The paper concludes that the two can be tuned one after the other in a few trials each.

:func:`coordinate_search` is that procedure (our version of it — the paper's exact steps are not
known to us): search one axis with the others held at their current best, then the next axis at the
chosen value, reusing any configuration already evaluated. :func:`fixnorm_search` applies it to
(learning rate, classifier norm). :func:`random_search` and :func:`grid_search` are the budget-matched
baselines. Every function takes an ``evaluate(config) -> score`` callable (higher is better unless
``maximize=False``) and records every trial, so the procedures can be tested on synthetic objectives
and compared on real ones. A score that is NaN (e.g. a diverged run) ranks below every other.

If the objective is additively separable over the axes, ``f = Σ_a f_a(x_a)``, coordinate search
returns the grid's optimum after ``Σ_a (n_a − 1) + 1`` evaluations, where a full grid needs
``Π_a n_a``; a joint grid or random search with the smaller budget generally misses it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Trial",
    "SearchResult",
    "LogUniform",
    "Uniform",
    "Choice",
    "coordinate_search",
    "fixnorm_search",
    "grid_search",
    "random_search",
]

Config = dict[str, Any]
Evaluate = Callable[[Config], float]


@dataclasses.dataclass(frozen=True)
class Trial:
  """One evaluated configuration and its score."""
  config: Mapping[str, Any]
  score: float


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """The outcome of a search: the best trial and every trial, in the order they ran."""
  best_config: Mapping[str, Any]
  best_score: float
  trials: tuple[Trial, ...]

  @property
  def num_trials(self) -> int:
    return len(self.trials)


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """A value drawn with ``log(value)`` uniform on ``[log(low), log(high)]``."""
  low: float
  high: float

  def __post_init__(self):
    if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 < self.low <= self.high):
      raise ValueError(f"LogUniform needs 0 < low <= high, both finite; got ({self.low}, {self.high}).")

  def sample(self, rng: np.random.Generator) -> float:
    return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclasses.dataclass(frozen=True)
class Uniform:
  """A value drawn uniformly on ``[low, high]``."""
  low: float
  high: float

  def __post_init__(self):
    if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
      raise ValueError(f"Uniform needs low <= high, both finite; got ({self.low}, {self.high}).")

  def sample(self, rng: np.random.Generator) -> float:
    return float(rng.uniform(self.low, self.high))


@dataclasses.dataclass(frozen=True)
class Choice:
  """A value drawn uniformly from a finite list."""
  values: tuple[Any, ...]

  def __init__(self, values: Sequence[Any]):
    values = tuple(values)
    if not values:
      raise ValueError("Choice needs at least one value.")
    object.__setattr__(self, "values", values)

  def sample(self, rng: np.random.Generator) -> Any:
    return self.values[int(rng.integers(len(self.values)))]


def _as_score(value: Any, config: Config) -> float:
  if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
    raise TypeError(f"evaluate must return a scalar score, got {value!r} for config {config}.")
  try:
    return float(value)
  except (TypeError, ValueError):
    raise TypeError(f"evaluate must return a scalar score, got {value!r} for config {config}.") from None


def _rank_key(score: float, maximize: bool) -> float:
  if math.isnan(score):
    return -math.inf
  return score if maximize else -score


class _Recorder:
  """Runs ``evaluate`` at most once per distinct config and keeps the best trial so far."""

  def __init__(self, evaluate: Evaluate, maximize: bool):
    if not callable(evaluate):
      raise TypeError(f"evaluate must be a callable config -> score, got {evaluate!r}.")
    self._evaluate = evaluate
    self._maximize = maximize
    self._cache: dict[tuple, float] = {}
    self.trials: list[Trial] = []
    self.best: Trial | None = None

  def __call__(self, config: Config) -> float:
    key = tuple(sorted((k, repr(v)) for k, v in config.items()))
    if key in self._cache:
      return self._cache[key]
    score = _as_score(self._evaluate(dict(config)), config)
    self._cache[key] = score
    trial = Trial(config=dict(config), score=score)
    self.trials.append(trial)
    if self.best is None or _rank_key(score, self._maximize) > _rank_key(self.best.score, self._maximize):
      self.best = trial
    return score

  def better(self, a: float, b: float) -> bool:
    return _rank_key(a, self._maximize) > _rank_key(b, self._maximize)

  def result(self) -> SearchResult:
    assert self.best is not None
    return SearchResult(best_config=dict(self.best.config), best_score=self.best.score,
                        trials=tuple(self.trials))


def _check_axes(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[str, tuple[Any, ...]]]:
  checked = []
  for entry in axes:
    if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
      raise TypeError(f"axes must be a sequence of (name, candidates) pairs, got entry {entry!r}.")
    name, candidates = entry
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
      raise TypeError(f"axis {name!r}: candidates must be a sequence of values, got {candidates!r}.")
    if not candidates:
      raise ValueError(f"axis {name!r} has no candidates.")
    checked.append((name, tuple(candidates)))
  names = [n for n, _ in checked]
  if len(set(names)) != len(names):
    raise ValueError(f"axes names must be distinct, got {names}.")
  if not checked:
    raise ValueError("axes must name at least one hyperparameter.")
  return checked


def coordinate_search(evaluate: Evaluate, axes: Sequence[tuple[str, Sequence[Any]]], *,
                      start: Mapping[str, Any], fixed: Mapping[str, Any] | None = None,
                      maximize: bool = True) -> SearchResult:
  """Searches one hyperparameter at a time, each at the best values found for those before it.

  For each axis ``(name, candidates)`` in order, evaluates every candidate with the other axes at
  their current values (``start`` for axes not yet searched, the winner for those already searched)
  and keeps the best; ties keep the earlier trial. A configuration already evaluated is not
  evaluated again, so when ``start[name]`` is among the candidates the search costs
  ``Σ_a (n_a − 1) + 1`` evaluations. For an objective that is additively separable over the axes it
  returns the best point of the full grid.

  Args:
    evaluate: ``config -> score``; ``config`` is a fresh dict holding ``fixed`` and one value per axis.
    axes: ``(name, candidates)`` pairs, searched in this order.
    start: the value of every axis before it is searched.
    fixed: constants added to every config.
    maximize: whether a higher score is better.

  Returns:
    A :class:`SearchResult` with every trial in the order it ran.

  Example:
    >>> from wd_optax.tuning import coordinate_search
    >>> f = lambda c: -(c["x"] - 2) ** 2 - (c["y"] - 1) ** 2
    >>> result = coordinate_search(f, [("x", [0, 1, 2, 3]), ("y", [0, 1, 2])], start={"y": 0})
    >>> result.best_config, result.num_trials
    ({'x': 2, 'y': 1}, 6)

  References:
    Zhou, Sun & Zhong, *FixNorm: Dissecting Weight Decay for Training Deep Neural Networks*,
    arXiv:2103.15345 (tuning the decoupled hyperparameters separately).
  """
  checked = _check_axes(axes)
  names = [n for n, _ in checked]
  missing = [n for n in names[1:] if n not in start]
  if missing:
    raise ValueError(f"start must give a value for every axis searched after the first; missing {missing}.")
  fixed = dict(fixed or {})
  clash = sorted(set(fixed) & set(names))
  if clash:
    raise ValueError(f"fixed and axes both set {clash}.")
  record = _Recorder(evaluate, maximize)
  current = {n: start[n] for n in names if n in start}
  for name, candidates in checked:
    best_value, best_score = None, None
    for value in candidates:
      point = {**current, name: value}
      score = record({**fixed, **{n: point[n] for n in names if n in point}})
      if best_score is None or record.better(score, best_score):
        best_value, best_score = value, score
    current[name] = best_value
  return record.result()


def fixnorm_search(evaluate: Evaluate, *, learning_rates: Sequence[float],
                   classifier_norms: Sequence[float], default_classifier_norm: float,
                   fixed: Mapping[str, Any] | None = None, maximize: bool = True) -> SearchResult:
  """FixNorm's two-stage tuning: the learning rate at a default classifier norm, then the norm.

  Stage 1 evaluates each of ``learning_rates`` with ``classifier_norm = default_classifier_norm``;
  stage 2 evaluates each of ``classifier_norms`` at the winning learning rate (the pair already run
  in stage 1 is not run again). This relies on FixNorm decoupling the two (the learning rate sets the
  effective step of the scale-invariant weights, the classifier norm the logit scale) and on accuracy
  being unimodal in the classifier norm. Configs have keys ``"learning_rate"`` and
  ``"classifier_norm"`` plus ``fixed``.

  Args:
    evaluate: ``config -> score`` (higher is better unless ``maximize=False``).
    learning_rates: stage-1 candidates.
    classifier_norms: stage-2 candidates.
    default_classifier_norm: the norm held during stage 1 (best among ``classifier_norms`` to save
      a trial).
    fixed: constants added to every config.
    maximize: whether a higher score is better.

  Returns:
    A :class:`SearchResult`; ``num_trials`` is ``len(learning_rates) + len(classifier_norms) - 1``
    when the default is among the norms.

  Example:
    >>> from wd_optax.tuning import fixnorm_search
    >>> import math
    >>> f = lambda c: -abs(math.log10(c["learning_rate"]) + 1) - abs(math.log2(c["classifier_norm"]) - 2)
    >>> r = fixnorm_search(f, learning_rates=[1.0, 0.1, 0.01], classifier_norms=[1.0, 2.0, 4.0, 8.0],
    ...                    default_classifier_norm=1.0)
    >>> r.best_config, r.num_trials
    ({'learning_rate': 0.1, 'classifier_norm': 4.0}, 6)

  References:
    Zhou, Sun & Zhong, *FixNorm: Dissecting Weight Decay for Training Deep Neural Networks*,
    arXiv:2103.15345.
  """
  return coordinate_search(
      evaluate, [("learning_rate", learning_rates), ("classifier_norm", classifier_norms)],
      start={"classifier_norm": default_classifier_norm}, fixed=fixed, maximize=maximize)


def grid_search(evaluate: Evaluate, axes: Sequence[tuple[str, Sequence[Any]]], *,
                fixed: Mapping[str, Any] | None = None, maximize: bool = True) -> SearchResult:
  """Evaluates the full Cartesian product of the axes (the joint grid tuned baselines use).

  Args:
    evaluate: ``config -> score``.
    axes: ``(name, candidates)`` pairs; trials run in row-major order over them.
    fixed: constants added to every config.
    maximize: whether a higher score is better.

  Returns:
    A :class:`SearchResult` with ``Π_a n_a`` trials.

  Example:
    >>> from wd_optax.tuning import grid_search
    >>> r = grid_search(lambda c: c["a"] * c["b"], [("a", [1, 2]), ("b", [-1, 3])])
    >>> r.best_config, r.best_score, r.num_trials
    ({'a': 2, 'b': 3}, 6.0, 4)
  """
  checked = _check_axes(axes)
  fixed = dict(fixed or {})
  names = [n for n, _ in checked]
  clash = sorted(set(fixed) & set(names))
  if clash:
    raise ValueError(f"fixed and axes both set {clash}.")
  record = _Recorder(evaluate, maximize)
  for values in itertools.product(*(c for _, c in checked)):
    record({**fixed, **dict(zip(names, values))})
  return record.result()


def random_search(evaluate: Evaluate, space: Mapping[str, LogUniform | Uniform | Choice], *,
                  num_trials: int, seed: int, fixed: Mapping[str, Any] | None = None,
                  maximize: bool = True) -> SearchResult:
  """Evaluates ``num_trials`` configurations drawn independently from ``space``.

  The baseline a structured search must beat at the same budget (Bergstra & Bengio, 2012). Draws
  come from ``numpy.random.default_rng(seed)``, one value per key in ``space``'s order per trial, so
  a seed reproduces the same configs. Every draw is evaluated, repeats included, so the budget is
  exactly ``num_trials``.

  Args:
    evaluate: ``config -> score``.
    space: name -> :class:`LogUniform`, :class:`Uniform` or :class:`Choice`.
    num_trials: how many configs to draw and evaluate (>= 1).
    seed: seed of the draws.
    fixed: constants added to every config.
    maximize: whether a higher score is better.

  Returns:
    A :class:`SearchResult` with ``num_trials`` trials.

  Example:
    >>> from wd_optax.tuning import LogUniform, random_search
    >>> r = random_search(lambda c: -abs(c["lr"] - 0.1), {"lr": LogUniform(1e-3, 1.0)},
    ...                   num_trials=5, seed=0)
    >>> r.num_trials, 1e-3 <= r.best_config["lr"] <= 1.0
    (5, True)

  References:
    Bergstra & Bengio, *Random Search for Hyper-Parameter Optimization*, JMLR 2012.
  """
  if isinstance(num_trials, bool) or not isinstance(num_trials, (int, np.integer)) or num_trials < 1:
    raise ValueError(f"num_trials must be an int >= 1, got {num_trials!r}.")
  if not space:
    raise ValueError("space must name at least one hyperparameter.")
  for name, distribution in space.items():
    if not isinstance(distribution, (LogUniform, Uniform, Choice)):
      raise TypeError(
          f"space[{name!r}] must be a LogUniform, Uniform or Choice, got {distribution!r}.")
  fixed = dict(fixed or {})
  clash = sorted(set(fixed) & set(space))
  if clash:
    raise ValueError(f"fixed and space both set {clash}.")
  rng = np.random.default_rng(seed)
  trials, best = [], None
  for _ in range(int(num_trials)):
    config = {**fixed, **{name: d.sample(rng) for name, d in space.items()}}
    trial = Trial(config=config, score=_as_score(evaluate(dict(config)), config))
    trials.append(trial)
    if best is None or _rank_key(trial.score, maximize) > _rank_key(best.score, maximize):
      best = trial
  return SearchResult(best_config=dict(best.config), best_score=best.score, trials=tuple(trials))
