"""The report's validity checks (invalid claims, optima on a grid edge), its summary, and failed studies.

The studies' analyses on synthetic worlds with collapsed arms or unbracketed optima are in test_studies.py,
test_fixnorm_study.py and test_three_mechanisms_study.py; here the shared machinery is tested by hand."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import cli, report, studies
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
  return report.make_claim(id_, "s", "p", "m", CI, verdict, compared=compared, edges=edges, delta=1.0)


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
          "edge), 1 invalid; flagged 0 underpowered, 0 fragile; 0 studies failed.") in text
  assert "**invalid (compared arms diverged or at chance)** |" in text  # the claims table
  assert "*invalid* when every arm it compares" in text  # the printed rules


# --- power and stability flags -----------------------------------------------------------------------------------

def _t_interval(mean, half, n):
  return report.Interval(mean, mean - half, mean + half, n)


def test_detectable_effect_is_the_half_width_and_underpowered_needs_an_inconclusive_interval_wider_than_delta():
  healthy = [report.ArmHealth("A", 6)]
  # Half-width 2 against δ = 1: an effect of exactly δ would leave 0 inside the interval.
  wide = report.directional_claim("P1", "A beats B.", "m", _t_interval(0.5, 2.0, 6), min_effect=1.0,
                                  compared=healthy)
  assert wide.detectable == pytest.approx(2.0) and wide.verdict == report.INCONCLUSIVE
  assert wide.underpowered and report.UNDERPOWERED in wide.flags and wide.power_text == "h = 2 vs δ = 1"
  # Half-width 0.3 < δ: inconclusive only because the mean sits at the threshold (0.9 ± 0.3 straddles δ = 1).
  narrow = report.directional_claim("P2", "A beats B.", "m", _t_interval(0.9, 0.3, 6), min_effect=1.0,
                                    compared=healthy)
  assert narrow.verdict == report.INCONCLUSIVE and not narrow.underpowered
  # Decided despite a wide interval: the effect was large, so the flag does not apply.
  big = report.directional_claim("P3", "A beats B.", "m", _t_interval(5.0, 2.0, 6), min_effect=1.0,
                                 compared=healthy)
  assert big.verdict == report.REPRODUCED and not big.underpowered
  # Equivalence: a margin of 1 cannot be resolved by a half-width of 1.5 even around a true effect of 0.
  eq = report.equivalence_claim("P4", "A matches B.", "m", _t_interval(0.0, 1.5, 6), margin=1.0, compared=healthy)
  assert eq.verdict == report.INCONCLUSIVE and eq.underpowered and eq.delta == 1.0
  # One seed: an unbounded interval resolves nothing.
  one = report.directional_claim("P5", "A beats B.", "m", report.mean_ci([1.0]), min_effect=1.0, compared=healthy)
  assert one.detectable == np.inf and one.underpowered and not one.fragile
  # The hull interval's half-width is its longer side.
  lopsided = report.Interval(0.0, -3.0, 1.0, 6, report.HULL)
  assert report.half_width(lopsided) == 3.0


def test_a_claim_needs_a_positive_delta():
  with pytest.raises(ValueError, match="claim P6: min_effect=0 .* pass delta="):
    report.directional_claim("P6", "A beats B.", "m", CI, min_effect=0.0, compared=[])
  with_delta = report.directional_claim("P6", "A beats B.", "m", CI, min_effect=0.0, delta=0.5, compared=[])
  assert with_delta.delta == 0.5 and "δ = 0.5" in with_delta.prediction
  with pytest.raises(ValueError, match="claim P7: delta .* must be > 0"):
    report.make_claim("P7", "s", "p", "m", CI, report.REPRODUCED, compared=[], delta=0.0)


def test_roundoff_distance_is_root_two_standard_errors():
  # n = 5: t = 2.776445, half-width 2.776445 means SE = 1 and r = √2.
  ci = _t_interval(0.0, 2.776445, 5)
  assert report.roundoff_distance(ci) == pytest.approx(np.sqrt(2.0), rel=1e-6)
  assert report.roundoff_distance(_t_interval(0.0, 0.0, 5), quantum=0.02) == 0.02  # the floor
  assert report.roundoff_distance(report.mean_ci([1.0])) == np.inf


def test_fragile_when_an_end_is_within_roundoff_of_its_threshold():
  healthy = [report.ArmHealth("A", 5)]
  se = 0.1  # r = √2·0.1 ≈ 0.141 at n = 5
  half = 2.776445 * se

  def equivalence(mean):
    return report.equivalence_claim("S1", "A matches B.", "m", _t_interval(mean, half, 5), margin=1.5,
                                    compared=healthy)

  # Lower end at −1.5 − 0.05: within r of the margin: inconclusive now, reproduced after a small move.
  near = equivalence(-1.55 + half)
  assert near.verdict == report.INCONCLUSIVE and near.fragile and report.FRAGILE in near.flags
  assert not near.underpowered  # h ≈ 0.28 < 1.5: power is not the problem
  # Lower end 0.5 inside the margin, upper end 0.5 inside: no move of 0.14 changes anything.
  assert equivalence(0.0).verdict == report.REPRODUCED and not equivalence(0.0).fragile
  # Just past the margin on the other side (the B5b case: −1.528 against −1.5), not reproduced but fragile.
  past = equivalence(-1.55 - half)
  assert past.verdict == report.NOT_REPRODUCED and past.fragile
  # Far past it: stable.
  assert not equivalence(-3.0).fragile and equivalence(-3.0).verdict == report.NOT_REPRODUCED

  # Directional, reproduced with the mean 0.05 above δ = 1: a move of the mean by r drops it below δ.
  def directional(mean):
    return report.directional_claim("S2", "A beats B.", "m", _t_interval(mean, half, 5), min_effect=1.0,
                                    compared=healthy)
  assert directional(1.05).verdict == report.REPRODUCED and directional(1.05).fragile
  assert directional(2.0).verdict == report.REPRODUCED and not directional(2.0).fragile
  # Claims decided by a check are not fragile: the ends do not decide them.
  dead = [report.ArmHealth("A", 5, diverged=5)]
  invalid = report.equivalence_claim("S3", "A matches B.", "m", _t_interval(-1.55 + half, half, 5), margin=1.5,
                                     compared=dead)
  assert invalid.verdict == report.INVALID and not invalid.fragile and not invalid.underpowered


def test_report_prints_power_and_flags_and_counts_them():
  healthy = [report.ArmHealth("A", 6)]
  wide = report.directional_claim("P1", "A beats B.", "m", _t_interval(0.5, 2.0, 6), min_effect=1.0,
                                  compared=healthy)
  fine = report.equivalence_claim("P2", "A matches B.", "m", _t_interval(0.0, 0.1, 6), margin=1.0, compared=healthy)
  text = report.render([report.StudySection("s", "S", "", [wide, fine], [])], title="T")
  assert "| s | P1 | inconclusive | underpowered |" in text and "| s | P2 | reproduced | — |" in text
  assert "| h = 2 vs δ = 1 | **inconclusive** | underpowered |" in text
  assert "flagged 1 underpowered, 0 fragile" in text and "*underpowered*" in text and "*fragile*" in text


def test_a_failed_study_shows_the_exception_line_in_the_summary_and_the_traceback_in_its_section(tmp_path,
                                                                                                  monkeypatch):
  def broken(quick):
    raise ValueError("train.steps must be positive, got -3 | see config.py\nsecond line of the message")
  module = types.ModuleType("broken_report_study")
  module.STUDY = studies.Study(name="broken", title="broken study", setting="", make_config=broken,
                               analyze=lambda results, config: ([], ""))
  monkeypatch.setitem(sys.modules, "broken_report_study", module)
  monkeypatch.setitem(studies.REGISTRY, "broken", "broken_report_study")
  text = open(cli.reproduce(str(tmp_path), names=["broken"], log=lambda _: None)).read()
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


# --- statistics: quantiles from scipy, the bootstrap fallback, rank correlations ---------------------------------

@pytest.mark.parametrize("df,expected", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (10, 2.228139),
                                         (30, 2.042272), (100, 1.983972), (1000, 1.962339)])
def test_t_critical_matches_six_decimal_tables(df, expected):
  # The old hand table had 3 decimals and a Cornish-Fisher tail past df=30; these are the 6-decimal tables.
  assert report.t_critical(df) == pytest.approx(expected, abs=1e-6)
  with pytest.raises(ValueError, match="at least 2 samples"):
    report.t_critical(0)


def test_bootstrap_ci_follows_the_skew_of_a_collapsed_seed():
  # Nine seeds tie at 0 and one collapsed at −10: a resampled mean is −10·k/10 for k copies of the collapse,
  # so the bootstrap interval lies in [−10, 0] and leans left, while the t-interval is symmetric around −1.
  x = [0.0] * 9 + [-10.0]
  t, boot = report.mean_ci(x), report.bootstrap_ci(x)
  assert t.method == "t" and boot.method == "bootstrap" and boot.mean == t.mean == -1.0 and boot.n == 10
  assert t.high == pytest.approx(-1 + 2.262157 * np.sqrt(10.0) / np.sqrt(10))  # sd = √10 by hand
  assert -10.0 <= boot.low < t.low and boot.high == 0.0 < t.high
  assert report.bootstrap_ci(x) == boot  # a fixed resampling seed: reproducible
  assert str(boot).endswith("(bootstrap)") and str(t) == "-1 [-3.262, +1.262]"


def test_bootstrap_ci_of_constant_and_tiny_samples():
  assert report.bootstrap_ci([2.0, 2.0, 2.0]) == report.Interval(2.0, 2.0, 2.0, 3, "bootstrap")
  one = report.bootstrap_ci([1.0, np.nan])
  assert one.n == 1 and one.low == -np.inf and one.high == np.inf


def test_claims_fall_back_to_the_bootstrap_hull_only_with_partly_collapsed_arms():
  x = [0.0] * 9 + [-10.0]  # t: [−3.26, +1.26], inside ±3.5; bootstrap reaches −5
  ci = report.mean_ci(x)
  healthy = [report.ArmHealth("A", members=10), report.ArmHealth("B", members=10)]
  partial = [report.ArmHealth("A", members=10), report.ArmHealth("B", members=10, at_chance=1)]
  claim = lambda compared: report.equivalence_claim("X2", "A matches B.", "acc(A) − acc(B)", ci, margin=3.5,
                                                    compared=compared)
  kept = claim(healthy)
  assert kept.effect is ci and kept.verdict == report.REPRODUCED and "bootstrap" not in kept.notes
  fallback = claim(partial)
  boot = report.bootstrap_ci(x)
  assert fallback.effect.method == report.HULL
  assert (fallback.effect.low, fallback.effect.high) == (boot.low, ci.high)  # the hull of the two
  assert fallback.verdict == report.INCONCLUSIVE and "BCa bootstrap" in fallback.notes
  assert f"({report.HULL})" in report.claims_table([fallback])
  # Every compared arm failed: invalid, the interval is not recomputed.
  dead = [report.ArmHealth("A", members=10, diverged=10), report.ArmHealth("B", members=10, diverged=6)]
  assert claim(dead).verdict == report.INVALID and claim(dead).effect is ci
  # A hand-built interval (no samples) cannot be recomputed and stays.
  assert report.claim_interval(report.Interval(0.0, -1.0, 1.0, 5), partial).method == "t"


def test_zero_width_interval_is_flagged_in_the_notes():
  ci = report.paired_ci([0.5, 0.75, 0.5], [0.5, 0.75, 0.5])
  claim = report.directional_claim("X3", "A beats B.", "w(A) − w(B)", ci, min_effect=0.25,
                                   compared=[report.ArmHealth("A", 3)])
  assert (ci.low, ci.high) == (0.0, 0.0) and claim.verdict == report.NOT_REPRODUCED
  assert "All 3 per-seed values are equal" in claim.notes


def test_rank_correlations_match_hand_computation():
  # No ties: d = rank(x) − rank(y) = (−1, 1, −1, 1, 0), ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 24/120 = 0.8;
  # 8 concordant and 2 discordant pairs of 10, τ = (8 − 2)/10 = 0.6.
  x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
  rho, tau = report.spearman_ci(x, y, n_resamples=999), report.kendall_ci(x, y, n_resamples=999)
  assert rho.statistic == pytest.approx(0.8) and tau.statistic == pytest.approx(0.6)
  assert rho.n == tau.n == 5 and rho.method == "spearman" and tau.method == "kendall"
  # A tie in x: ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): ρ = Pearson of ranks = 4.5/√(4.5·5);
  # τ-b = (C − D)/√((n0 − n1)·n0) with 5 concordant, 0 discordant, n0 = 6 pairs, n1 = 1 tied in x.
  x, y = [1, 2, 2, 3], [1, 3, 2, 4]
  assert report.spearman_ci(x, y, n_resamples=999).statistic == pytest.approx(4.5 / np.sqrt(22.5))
  assert report.kendall_ci(x, y, n_resamples=999).statistic == pytest.approx(5 / np.sqrt(30))


def test_rank_correlation_intervals():
  x = np.arange(8.0)
  # Monotone: every resample with two distinct x values has ρ = 1 (constant resamples are dropped).
  perfect = report.spearman_ci(x, x ** 3, n_resamples=999)
  assert (perfect.statistic, perfect.low, perfect.high) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)
  anti = report.kendall_ci(x, -x, n_resamples=999)
  assert (anti.statistic, anti.low, anti.high) == pytest.approx((-1.0, -1.0, -1.0), abs=1e-12)
  rng = np.random.default_rng(1)
  a = rng.normal(size=40)
  strong = report.spearman_ci(a, a + 0.3 * rng.normal(size=40), n_resamples=999)
  assert 0 < strong.low < strong.statistic < strong.high <= 1
  none = report.kendall_ci(a, rng.normal(size=40), n_resamples=999)
  assert none.low < 0 < none.high and none.low < none.statistic < none.high
  assert report.kendall_ci(a, a[::-1], n_resamples=999) == report.kendall_ci(a, a[::-1], n_resamples=999)
  # Pairs with a NaN are dropped; too few pairs or a constant variable say nothing.
  assert report.spearman_ci([1, 2, np.nan, 4], [1, 2, 3, 4], n_resamples=99).n == 3
  few = report.spearman_ci([1, 2], [2, 1])
  assert np.isnan(few.statistic) and (few.low, few.high) == (-1.0, 1.0)
  assert np.isnan(report.kendall_ci([1, 1, 1], [1, 2, 3]).statistic)
  with pytest.raises(ValueError, match="equal length, got 3 and 2"):
    report.spearman_ci([1, 2, 3], [1, 2])


def test_fixnorm_non_inferiority_claim_takes_the_same_bootstrap_fallback():
  from experiments.studies import fixnorm
  x = [0.0] * 9 + [-10.0]  # t low end −3.26 clears a 3.5 margin; the bootstrap's (−5) does not
  ci = report.mean_ci(x)
  partial = [report.ArmHealth("A", members=10), report.ArmHealth("B", members=10, at_chance=1)]
  healthy = [report.ArmHealth("A", members=10), report.ArmHealth("B", members=10)]
  claim = lambda compared: fixnorm._non_inferiority_claim(  # pylint: disable=protected-access
      "F1a", "A matches or beats B.", "acc(A) − acc(B)", ci, 3.5, "", compared=compared)
  assert claim(healthy).verdict == report.REPRODUCED and claim(healthy).effect is ci
  fallback = claim(partial)
  assert fallback.effect.method == report.HULL and fallback.effect.low == report.bootstrap_ci(x).low
  assert fallback.verdict == report.INCONCLUSIVE
