"""The report's validity checks (invalid claims, optima on a grid edge), its summary, and failed studies.

The studies' analyses on synthetic worlds with collapsed arms or unbracketed optima are in test_studies.py,
test_fixnorm_study.py and test_three_mechanisms_study.py; here the shared machinery is tested by hand."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import report, runner, studies
from experiments.studies import _common
from experiments.train.metrics import ArmResult

CI = report.Interval(0.1, -0.2, 0.4, 5)  # inside ±1: an equivalence claim on it is reproduced


def _equivalence(compared, edges=()):
  return report.equivalence_claim("X1", "A matches B.", "acc(A) − acc(B)", CI, margin=1.0, compared=compared,
                                  edges=edges)


def test_invalid_only_when_every_compared_arm_failed():
  dead = report.ArmHealth("A", members=5, diverged=5)
  chance = report.ArmHealth("B", members=5, at_chance=3)          # 3 of 5: a majority
  fine = report.ArmHealth("C", members=5)
  few = report.ArmHealth("D", members=5, diverged=1, at_chance=1)  # 2 of 5: not a majority
  assert _equivalence([dead, chance]).verdict == report.INVALID
  claim = _equivalence([dead, fine])
  assert claim.verdict == claim.interval_verdict == report.REPRODUCED and claim.reason == ""
  assert _equivalence([dead, few]).verdict == report.REPRODUCED
  assert "D: 1 of 5 diverged, 1 of 5 at chance" in _equivalence([dead, few]).notes
  assert _equivalence([report.ArmHealth("E", members=4, diverged=2), fine]).verdict == report.REPRODUCED
  # Half is not more than half: 2 of 4 degenerate leaves the arm measuring something.
  assert _equivalence([report.ArmHealth("E", members=4, diverged=2)]).verdict == report.REPRODUCED
  assert _equivalence([report.ArmHealth("E", members=4, diverged=3)]).verdict == report.INVALID
  invalid = _equivalence([dead, chance], edges=report.grid_edges("A", {"lam": 1.0}, {"lam": [1.0, 2.0]}))
  assert invalid.verdict == report.INVALID  # invalid wins over the edge check
  assert "A: 5 of 5 diverged; B: 3 of 5 at chance" in invalid.notes and "would say reproduced" in invalid.notes


def test_directional_and_equivalence_claims_require_the_compared_arms():
  with pytest.raises(TypeError, match="compared"):
    report.directional_claim("X", "s", "m", CI, min_effect=0.0)  # noqa  (the missing argument is the point)
  with pytest.raises(TypeError, match="compared"):
    report.equivalence_claim("X", "s", "m", CI, margin=1.0)


def test_grid_edges_flag_only_picks_on_an_end_of_a_swept_grid():
  grid = {"learning_rate": [0.3, 0.03, 0.1], "weight_decay": [5e-4, 5e-3, 5e-2], "momentum": [0.9]}
  assert report.grid_edges("sgd", {"learning_rate": 0.1, "weight_decay": 5e-3, "momentum": 0.9}, grid) == []
  edges = report.grid_edges("sgd", {"learning_rate": 0.3, "weight_decay": 5e-4, "momentum": 0.9}, grid)
  assert [str(e) for e in edges] == ["sgd's best learning_rate = 0.3 is the top of its grid {0.03, 0.1, 0.3}",
                                     "sgd's best weight_decay = 0.0005 is the bottom of its grid {0.0005, 0.005, 0.05}"]
  claim = _equivalence([report.ArmHealth("A", 5)], edges=edges)
  assert claim.verdict == report.INCONCLUSIVE and claim.interval_verdict == report.REPRODUCED
  assert claim.reason.startswith("inconclusive: optimum at grid edge") and "top of its grid" in claim.notes


def _result(accuracy, *, diverged_at=None, final_loss=0.5):
  accuracy = np.asarray(accuracy, float)
  n = accuracy.size
  series = {"test_accuracy": np.stack([np.full(n, np.nan), accuracy], 1),
            "train_loss": np.stack([np.ones(n), np.full(n, final_loss)], 1)}
  if diverged_at is not None:
    series["diverged_at"] = np.stack([np.full(n, np.nan), np.asarray(diverged_at, float)], 1)
  return ArmResult("a", "a", list(range(n)), {}, np.array([10, 20]), series)


def test_member_status_against_hand_labels():
  # 10 classes: chance is 10% ± 2.5 points.
  diverged, chance = _common.member_status(_result([0.10, 0.124, 0.076, 0.13, 0.07, np.nan, 0.5]), 10)
  assert diverged.tolist() == [False] * 7
  assert chance.tolist() == [True, True, True, False, False, True, False]
  diverged, chance = _common.member_status(_result([0.102, 0.102, 0.6], diverged_at=[15, np.nan, np.nan]), 10)
  assert diverged.tolist() == [True, False, False] and chance.tolist() == [False, True, False]
  diverged, _ = _common.member_status(_result([0.102, 0.6], final_loss=np.nan), 10)  # NaN loss, no mark
  assert diverged.tolist() == [True, True]
  _, chance = _common.member_status(_result([0.01, 0.10]), 100)  # 100 classes: 1% ± 0.25 points
  assert chance.tolist() == [True, False]


def test_health_counts_the_members_of_the_compared_seeds_and_sweeps():
  config = config_lib.ExperimentConfig(name="t", data=config_lib.DataConfig(name="digits"))
  results = {"a": _result([0.102, 0.102, 0.6], diverged_at=[15, np.nan, np.nan]), "b": _result([0.6, 0.6, 0.6])}
  a, b = _common.health(results, config, "a", "b")
  assert (a.members, a.diverged, a.at_chance, a.failed) == (3, 1, 1, True)
  assert (b.members, b.degenerate, b.failed) == (3, 0, False)
  (only,) = _common.health(results, config, "a", seeds=[2])
  assert (only.members, only.degenerate) == (1, 0)
  (both,) = _common.health(results, config, ("a and b", ["a", "b"]))
  assert (both.name, both.members, both.degenerate, both.failed) == ("a and b", 6, 2, False)
  config.data.name = "imagenet"
  with pytest.raises(ValueError, match="data.name 'imagenet' has no class count"):
    _common.health(results, config, "a")


def _claim(id_, verdict, compared=(), edges=()):
  return report.make_claim(id_, "s", "p", "m", CI, verdict, compared=compared, edges=edges)


def test_summary_counts_every_verdict_and_names_the_overrides():
  dead = report.ArmHealth("A", 3, diverged=3)
  edge = report.grid_edges("A", {"lam": 2.0}, {"lam": [1.0, 2.0]})
  section = report.StudySection(name="s", title="S", setting="", plots=[], claims=[
      _claim("C1", report.REPRODUCED), _claim("C2", report.REPRODUCED, [dead]),
      _claim("C3", report.NOT_REPRODUCED, edges=edge), _claim("C4", report.INCONCLUSIVE)])
  text = report.render([section], title="T")
  assert "| s | C2 | invalid (compared arms diverged or at chance) |" in text
  assert "| s | C3 | inconclusive (optimum at grid edge) |" in text
  assert ("**Totals:** 4 claims: 1 reproduced, 0 not reproduced, 2 inconclusive (1 with the optimum at a grid "
          "edge), 1 invalid; 0 studies failed.") in text
  assert "**invalid (compared arms diverged or at chance)** |" in text  # the claims table
  assert "*invalid* when every arm it compares" in text  # the printed rules


def test_a_failed_study_shows_the_exception_line_in_the_summary_and_the_traceback_in_its_section(tmp_path,
                                                                                                  monkeypatch):
  def broken(quick):
    raise ValueError("train.steps must be positive, got -3 | see config.py\nsecond line of the message")
  module = types.ModuleType("broken_report_study")
  module.STUDY = studies.Study(name="broken", title="broken study", setting="", make_config=broken,
                               analyze=lambda results, config: ([], ""))
  monkeypatch.setitem(sys.modules, "broken_report_study", module)
  monkeypatch.setitem(studies.REGISTRY, "broken", "broken_report_study")
  text = open(runner.reproduce(str(tmp_path), names=["broken"], log=lambda _: None)).read()
  summary = text.split("## Summary")[1].split("**Totals:**")[0]
  assert "| broken | — | failed: ValueError: train.steps must be positive, got -3 \\| see config.py |" in summary
  assert "Traceback" not in summary
  body = text.split("## broken study")[1]
  assert "Traceback (most recent call last):" in body and "second line of the message" in body
  assert "1 study failed." in text


def test_a_traceback_without_its_summary_line_is_shown_by_its_last_line():
  error = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nKeyError: \'adamw\'\n\n'
  text = report.render([report.StudySection(name="s", title="S", setting="", claims=[], plots=[], error=error)],
                       title="T")
  assert "| s | — | failed: KeyError: 'adamw' |" in text
