"""The decoupled tuner against brute force on synthetic objectives, and its budget-matched baselines."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_optax.tuning import (Choice, LogUniform, Uniform, coordinate_search, fixnorm_search,
                             grid_search, random_search)

_LRS = [1.0, 0.3, 0.1, 0.03, 0.01]
_NORMS = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def _table_objective(lr_scores, norm_scores):
  def evaluate(config):
    return lr_scores[_LRS.index(config["learning_rate"])] + norm_scores[_NORMS.index(config["classifier_norm"])]
  return evaluate


@settings(max_examples=60, deadline=None)
# Integer scores: their sums are exact, so the grid optimum is unique (floats can absorb each other).
@given(lr_scores=st.lists(st.integers(-1000, 1000), min_size=5, max_size=5, unique=True),
       norm_scores=st.lists(st.integers(-1000, 1000), min_size=6, max_size=6, unique=True),
       default_index=st.integers(0, 5))
def test_fixnorm_search_finds_the_grid_optimum_of_any_separable_objective(lr_scores, norm_scores,
                                                                          default_index):
  evaluate = _table_objective(lr_scores, norm_scores)
  result = fixnorm_search(evaluate, learning_rates=_LRS, classifier_norms=_NORMS,
                          default_classifier_norm=_NORMS[default_index])
  brute = max(itertools.product(_LRS, _NORMS),
              key=lambda p: evaluate({"learning_rate": p[0], "classifier_norm": p[1]}))
  assert (result.best_config["learning_rate"], result.best_config["classifier_norm"]) == brute
  assert result.num_trials == len(_LRS) + len(_NORMS) - 1
  assert len({tuple(sorted(t.config.items())) for t in result.trials}) == result.num_trials


def test_budget_matched_baselines_miss_what_the_decoupled_search_finds():
  """Separable log-quadratic objective with its optimum on the grid, off any 3x3 sub-grid."""
  def evaluate(config):
    return -(math.log10(config["learning_rate"]) - math.log10(0.3)) ** 2 \
        - (math.log2(config["classifier_norm"]) - math.log2(8.0)) ** 2

  decoupled = fixnorm_search(evaluate, learning_rates=_LRS, classifier_norms=_NORMS,
                             default_classifier_norm=1.0)
  budget = decoupled.num_trials
  assert decoupled.best_config == {"learning_rate": 0.3, "classifier_norm": 8.0}
  assert decoupled.best_score == 0.0
  # The same budget as a joint grid (every other candidate) does not contain the optimum.
  grid = grid_search(evaluate, [("learning_rate", _LRS[::2]), ("classifier_norm", _NORMS[::2])])
  assert grid.num_trials <= budget and grid.best_score < -0.2
  space = {"learning_rate": LogUniform(0.01, 1.0), "classifier_norm": LogUniform(0.5, 16.0)}
  random_best = [random_search(evaluate, space, num_trials=budget, seed=s).best_score for s in range(20)]
  assert max(random_best) < 0.0
  assert np.median(random_best) < -0.05


def test_coordinate_search_order_and_reuse_of_the_start_point():
  calls = []

  def evaluate(config):
    calls.append(dict(config))
    return -abs(config["a"] - 2) - abs(config["b"] - 30) + (100 if config["seed"] == 7 else 0)

  result = coordinate_search(evaluate, [("a", [1, 2, 3]), ("b", [10, 20, 30])], start={"b": 20},
                             fixed={"seed": 7})
  assert calls == [{"seed": 7, "a": 1, "b": 20}, {"seed": 7, "a": 2, "b": 20}, {"seed": 7, "a": 3, "b": 20},
                   {"seed": 7, "a": 2, "b": 10}, {"seed": 7, "a": 2, "b": 30}]
  assert result.best_config == {"seed": 7, "a": 2, "b": 30}
  assert [t.config for t in result.trials] == calls


def test_coordinate_search_is_only_guaranteed_for_separable_objectives():
  """A ridge along the diagonal: each one-axis step stays put, while the grid has a better point."""
  values = [0, 1, 2]
  evaluate = lambda c: 10.0 * (c["x"] == c["y"]) + c["x"] + c["y"]
  result = coordinate_search(evaluate, [("x", values), ("y", values)], start={"y": 0})
  grid = grid_search(evaluate, [("x", values), ("y", values)])
  assert result.best_config == {"x": 0, "y": 0}
  assert grid.best_config == {"x": 2, "y": 2} and grid.best_score > result.best_score


def test_nan_scores_rank_last_and_minimize_flips_the_order():
  evaluate = lambda c: float("nan") if c["lr"] == 1.0 else c["lr"]
  best = grid_search(evaluate, [("lr", [1.0, 0.1, 0.01])])
  assert best.best_config == {"lr": 0.1}
  worst_first = grid_search(evaluate, [("lr", [1.0, 0.1, 0.01])], maximize=False)
  assert worst_first.best_config == {"lr": 0.01}
  all_nan = grid_search(lambda c: float("nan"), [("lr", [1.0, 0.1])])
  assert all_nan.best_config == {"lr": 1.0} and math.isnan(all_nan.best_score)


def test_grid_search_matches_numpy_argmax():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(4, 3, 2))
  axes = [("i", [0, 1, 2, 3]), ("j", [0, 1, 2]), ("k", [0, 1])]
  result = grid_search(lambda c: table[c["i"], c["j"], c["k"]], axes)
  assert result.num_trials == 24
  assert (result.best_config["i"], result.best_config["j"], result.best_config["k"]) == \
      np.unravel_index(np.argmax(table), table.shape)


def test_random_search_draws_reproducibly_from_the_space():
  space = {"lr": LogUniform(1e-4, 1.0), "m": Uniform(0.5, 0.9), "opt": Choice(["sgd", "adam"])}
  seen = []
  result = random_search(lambda c: seen.append(c) or 0.0, space, num_trials=2000, seed=3)
  again = random_search(lambda c: 0.0, space, num_trials=2000, seed=3)
  other = random_search(lambda c: 0.0, space, num_trials=2000, seed=4)
  assert result.num_trials == len(seen) == 2000
  assert [t.config for t in again.trials] == [t.config for t in result.trials]
  assert [t.config for t in other.trials] != [t.config for t in result.trials]
  lrs = np.array([c["lr"] for c in seen])
  ms = np.array([c["m"] for c in seen])
  assert lrs.min() >= 1e-4 and lrs.max() <= 1.0 and ms.min() >= 0.5 and ms.max() <= 0.9
  # Log-uniform: each decade holds about a quarter of the draws (binomial sd ~ 0.01).
  decades = np.histogram(np.log10(lrs), bins=[-4, -3, -2, -1, 0])[0] / len(lrs)
  np.testing.assert_allclose(decades, 0.25, atol=0.04)
  assert abs(np.mean(ms) - 0.7) < 0.01
  assert {c["opt"] for c in seen} == {"sgd", "adam"}


def test_bad_arguments_are_named():
  f = lambda c: 0.0
  with pytest.raises(ValueError, match="axis 'lr' has no candidates"):
    coordinate_search(f, [("lr", [])], start={})
  with pytest.raises(ValueError, match=r"missing \['c'\]"):
    coordinate_search(f, [("lr", [1.0]), ("c", [1.0])], start={})
  with pytest.raises(ValueError, match="fixed and axes both set"):
    grid_search(f, [("lr", [1.0])], fixed={"lr": 2.0})
  with pytest.raises(ValueError, match="num_trials must be an int >= 1"):
    random_search(f, {"lr": LogUniform(0.1, 1.0)}, num_trials=0, seed=0)
  with pytest.raises(TypeError, match=r"space\['lr'\] must be"):
    random_search(f, {"lr": (0.1, 1.0)}, num_trials=1, seed=0)
  with pytest.raises(ValueError, match="0 < low <= high"):
    LogUniform(0.0, 1.0)
  with pytest.raises(TypeError, match="evaluate must return a scalar score"):
    grid_search(lambda c: [1.0], [("lr", [1.0])])
