"""Studies and their statistics: registry, configs, the t-interval and verdict rules against hand computations,
and each study's analysis on synthetic per-seed results whose right answers are known by construction."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import report, studies
from experiments.studies import adam_buffers, decay_placement, early_decay
from experiments.train import make_groups
from experiments.train.metrics import ArmResult


# --- statistics -------------------------------------------------------------------------------------------------

def test_mean_ci_matches_hand_computation():
  x = [1.0, 2.0, 4.0, 7.0, 11.0]
  mean = 5.0
  sd = math.sqrt(((1 - 5) ** 2 + (2 - 5) ** 2 + (4 - 5) ** 2 + (7 - 5) ** 2 + (11 - 5) ** 2) / 4)  # = sqrt(16.5)
  half = 2.776445 * sd / math.sqrt(5)  # t_{0.975, 4} = 2.776445 (printed t tables, 6 decimals)
  ci = report.mean_ci(x)
  assert ci.n == 5 and ci.mean == pytest.approx(mean)
  assert ci.low == pytest.approx(mean - half, abs=1e-5) and ci.high == pytest.approx(mean + half, abs=1e-5)


@pytest.mark.parametrize("df,expected", [(1, 12.706), (9, 2.262), (30, 2.042), (40, 2.021), (60, 2.000),
                                         (120, 1.980)])
def test_t_critical_values_match_printed_tables(df, expected):
  assert report.t_critical(df) == pytest.approx(expected, abs=2e-3)


def test_paired_ci_is_the_interval_of_differences():
  a, b = np.array([0.9, 0.8, 0.85, 0.95]), np.array([0.7, 0.75, 0.8, 0.8])
  d = a - b
  ci = report.paired_ci(a, b)
  half = 3.182446 * d.std(ddof=1) / 2.0  # t_{0.975, 3}
  assert ci.mean == pytest.approx(d.mean()) and ci.high - ci.mean == pytest.approx(half, rel=1e-6)
  with pytest.raises(ValueError, match="equal shapes"):
    report.paired_ci(a, b[:3])


def test_single_sample_gives_infinite_interval_and_inconclusive_verdict():
  ci = report.mean_ci([3.0])
  assert math.isinf(ci.low) and math.isinf(ci.high)
  assert report.directional_verdict(ci, 0.5) == report.INCONCLUSIVE
  assert report.equivalence_verdict(ci, 1.0) == report.INCONCLUSIVE


@pytest.mark.parametrize("low,high,verdict", [(0.1, 2.0, report.REPRODUCED), (-1.0, 0.4, report.NOT_REPRODUCED),
                                              (-3.0, -1.0, report.NOT_REPRODUCED), (-0.2, 1.0, report.INCONCLUSIVE),
                                              (0.1, 0.8, report.INCONCLUSIVE)])
def test_directional_verdict_rule(low, high, verdict):
  assert report.directional_verdict(report.Interval((low + high) / 2, low, high, 5), 0.5) == verdict


@pytest.mark.parametrize("low,high,verdict", [(-0.5, 0.9, report.REPRODUCED), (1.2, 3.0, report.NOT_REPRODUCED),
                                              (-4.0, -1.1, report.NOT_REPRODUCED), (-0.5, 1.5, report.INCONCLUSIVE)])
def test_equivalence_verdict_rule(low, high, verdict):
  assert report.equivalence_verdict(report.Interval((low + high) / 2, low, high, 5), 1.0) == verdict


# --- registry and configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", studies.names())
@pytest.mark.parametrize("quick", [True, False])
def test_registered_configs_validate_and_group(name, quick):
  study = studies.get(name)
  assert study.name == name and study.setting and study.title
  config = study.make_config(quick)
  config_lib.validate(config)
  groups = make_groups(config)
  members = sum(len(g.members) for g in groups)
  assert members == sum(config.seeds * int(np.prod([len(v) for v in a.sweep.values()])) for a in config.arms)
  if quick:  # reproduce --quick must fit in 10 minutes on 2 cores with every study: keep each one small
    assert config.train.steps * members <= 60_000


def test_early_decay_arms_share_one_program():
  (group,) = make_groups(early_decay.make_config(True))
  assert {m.arm for m in group.members} == set(early_decay.ARMS)


def test_unknown_study_is_a_clear_error():
  with pytest.raises(KeyError, match="unknown study 'nope'; registered studies: early_decay"):
    studies.get("nope")


# --- analyses on synthetic results ------------------------------------------------------------------------------

def arm(label, acc, *, arm_name=None, swept=None, norms=None, steps=(100, 200)):
  acc = np.asarray(acc, float)
  seeds = list(range(len(acc)))
  series = {"test_accuracy": np.stack([np.full(len(acc), np.nan), acc], axis=1),
            "train_accuracy": np.ones((len(acc), 2))}
  if norms is not None:
    series["norm/scale_invariant"] = np.asarray(norms, float)
  return ArmResult(label=label, arm=arm_name or label, seeds=seeds, swept=swept or {}, steps=np.array(steps),
                   series=series)


RNG = np.random.default_rng(0)
BASE = 0.5 + 0.02 * RNG.standard_normal(8)


def jitter(scale=0.001):
  return scale * RNG.standard_normal(8)


def early_decay_world_where_the_paper_is_right():
  """B1/B2 as predicted: decay ≈ early decay ≫ none ≈ late, and early decay keeps the norms small."""
  return {
      "none": arm("none", BASE, norms=np.tile([20.0, 30.0], (8, 1))),
      "always": arm("always", BASE + 0.04 + jitter(), norms=np.tile([10.0, 9.0], (8, 1))),
      "early25": arm("early25", BASE + 0.035 + jitter(), norms=np.tile([10.0, 14.0], (8, 1))),
      "early50": arm("early50", BASE + 0.04 + jitter(), norms=np.tile([10.0, 12.0], (8, 1))),
      "late50": arm("late50", BASE + jitter(), norms=np.tile([20.0, 15.0], (8, 1))),
  }


def test_early_decay_analysis_on_a_world_where_the_paper_is_right():
  results = early_decay_world_where_the_paper_is_right()
  claims, table = early_decay.analyze(results, early_decay.make_config(True))
  verdicts = {c.id: c.verdict for c in claims}
  assert verdicts == {"B1a": "reproduced", "B1b": "reproduced", "B1c": "reproduced", "B1d": "reproduced",
                      "B2": "reproduced"}
  b1a = next(c for c in claims if c.id == "B1a")
  expected = report.paired_ci(100 * results["always"].final(), 100 * results["none"].final())
  assert b1a.effect == expected and b1a.effect.mean == pytest.approx(4.0, abs=0.2)
  b2 = next(c for c in claims if c.id == "B2")
  assert b2.effect.mean == pytest.approx(math.log(30 / 14))
  assert "| early50 | 8 |" in table


def test_early_decay_analysis_on_a_world_where_the_paper_is_wrong():
  results = {
      "none": arm("none", BASE + 0.04, norms=np.tile([20.0, 30.0], (8, 1))),
      "always": arm("always", BASE + jitter(), norms=np.tile([10.0, 9.0], (8, 1))),
      "early25": arm("early25", BASE + 0.04 + jitter(), norms=np.tile([10.0, 29.0], (8, 1))),
      "early50": arm("early50", BASE + 0.04 + jitter(), norms=np.tile([10.0, 29.5], (8, 1))),
      "late50": arm("late50", BASE - 0.04 + jitter(), norms=np.tile([20.0, 15.0], (8, 1))),
  }
  verdicts = {c.id: c.verdict for c in early_decay.analyze(results, early_decay.make_config(True))[0]}
  assert verdicts == {"B1a": "not reproduced", "B1b": "not reproduced", "B1c": "reproduced",
                      "B1d": "not reproduced", "B2": "not reproduced"}


def with_b3_measures(results, *, raw_sign, invariant_sign):
  """Adds the four B3 measures to every arm: each a monotone function of the test error with the given sign
  (+1: ranks like the error, −1: reverses it), so Spearman's ρ with the error is exactly that sign."""
  for r in results.values():
    error = 100 - 100 * r.final("test_accuracy")
    for name, (_, _, invariant) in early_decay.B3_MEASURES.items():
      sign = invariant_sign if invariant else raw_sign
      value = np.exp(0.1 * sign * error)  # positive, like a norm or a sharpness
      r.series[f"b3/{name}"] = np.stack([np.full(len(value), np.nan), value], axis=1)
  return results


def test_b3_analysis_when_raw_measures_misrank_and_the_scale_invariant_one_ranks(tmp_path):
  results = with_b3_measures(early_decay_world_where_the_paper_is_right(), raw_sign=-1, invariant_sign=1)
  claims = {c.id: c for c in early_decay.analyze(results, early_decay.make_config(True))[0]}
  assert {k: claims[k].verdict for k in ("B3a", "B3b", "B3c", "B3d")} == dict.fromkeys(
      ("B3a", "B3b", "B3c", "B3d"), report.REPRODUCED)
  b3d, b3a = claims["B3d"], claims["B3a"]
  # 4 arms × 8 seeds; ρ = +1 for the scale-invariant measure, −1 for the raw ones (an exact reversal).
  assert b3d.effect.n == 32 and b3d.effect.mean == pytest.approx(1.0)
  assert b3a.effect.mean == pytest.approx(early_decay.RHO_MIN + 1.0) and b3a.delta == early_decay.RHO_MIN
  assert "ρ = +1.000" in b3d.notes and "ρ = -1.000" in b3a.notes
  (png,) = early_decay.plots(results, early_decay.make_config(True), str(tmp_path))
  assert png.endswith("early_decay_b3_measures.png") and os.path.exists(png) and os.path.exists(png[:-3] + "svg")


def test_b3_analysis_when_the_raw_measure_ranks_and_the_scale_invariant_one_does_not():
  results = with_b3_measures(early_decay_world_where_the_paper_is_right(), raw_sign=1, invariant_sign=-1)
  claims = {c.id: c for c in early_decay.analyze(results, early_decay.make_config(True))[0]}
  assert {k: claims[k].verdict for k in ("B3a", "B3b", "B3c", "B3d")} == dict.fromkeys(
      ("B3a", "B3b", "B3c", "B3d"), report.NOT_REPRODUCED)
  # The ranking by hand: the test errors, pooled over arms and seeds, against the measure.
  error = np.concatenate([100 - 100 * results[a].final("test_accuracy") for a in early_decay.B3_ARMS])
  measure = np.concatenate([results[a].final("b3/sq_norm") for a in early_decay.B3_ARMS])
  order = lambda v: np.argsort(np.argsort(v))
  assert (order(error) == order(measure)).all()


def test_b3_measures_of_the_eval_hook_against_their_definitions():
  # A linear "network" whose hidden kernel feeds a batch normalisation: scaling that kernel changes the raw
  # measures by the scale (Σ‖W‖² by c²) and leaves the scale-invariant sharpness exactly unchanged.
  import jax
  import jax.numpy as jnp

  def apply(params, model_state, x, train):
    h = x @ params["hidden"]["kernel"]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-12)
    return h @ params["classifier"]["kernel"], model_state

  key = jax.random.key(3)
  x = jax.random.normal(key, (64, 5))
  y = jnp.arange(64) % 3
  params = {"hidden": {"kernel": jax.random.normal(jax.random.key(1), (5, 4))},
            "classifier": {"kernel": jax.random.normal(jax.random.key(2), (4, 3))}}
  scaled = {"hidden": {"kernel": 10.0 * params["hidden"]["kernel"]}, "classifier": params["classifier"]}
  a, b = early_decay.eval_metrics(apply, params, {}, x, y), early_decay.eval_metrics(apply, scaled, {}, x, y)
  sq = lambda p: sum(float(np.sum(np.square(np.asarray(l)))) for l in jax.tree.leaves(p))
  assert float(a["b3/sq_norm"]) == pytest.approx(sq(params), rel=1e-5)
  assert float(b["b3/sq_norm"]) == pytest.approx(sq(scaled), rel=1e-5)
  assert float(b["b3/sharpness_si"]) == pytest.approx(float(a["b3/sharpness_si"]), rel=1e-3, abs=1e-6)
  assert float(b["b3/sharpness_raw"]) != pytest.approx(float(a["b3/sharpness_raw"]), rel=1e-2)


def test_decay_placement_analysis():
  grow = np.tile([10.0, 20.0, 30.0, 40.0], (8, 1))
  flat = np.tile([10.0, 8.0, 8.0, 8.0], (8, 1))
  steps = (100, 200, 300, 400)  # mid-training = step 200
  results = {
      "none": arm("none", BASE, norms=grow, steps=steps),
      "all": arm("all", BASE + 0.03 + jitter(), norms=flat, steps=steps),
      "conv": arm("conv", BASE + 0.03 + jitter(), norms=flat, steps=steps),
      "classifier": arm("classifier", BASE + jitter(), norms=grow, steps=steps),
      "norm_sq_lr": arm("norm_sq_lr", BASE + 0.005 + jitter(), norms=grow, steps=steps),
  }
  for r in results.values():  # 4 logged points
    r.series["test_accuracy"] = np.concatenate([np.full((8, 2), np.nan), r.series["test_accuracy"]], axis=1)
    r.series["train_accuracy"] = np.ones((8, 4))
  claims, _ = decay_placement.analyze(results, decay_placement.make_config(True))
  verdicts = {c.id: c.verdict for c in claims}
  assert all(c.compared for c in claims)
  assert verdicts == {"Z1a": "reproduced", "Z1b": "reproduced", "Z1c": "reproduced", "Z1d": "reproduced",
                      "Z2": "not reproduced"}
  z1d = next(c for c in claims if c.id == "Z1d")
  assert z1d.effect.mean == pytest.approx(math.log(40 / 20) - math.log(8 / 8))


def sweep_results(curves: dict[str, tuple[list, list]]):
  results = {}
  for name, (lams, accs) in curves.items():
    for lam, acc in zip(lams, accs):
      label = f"{name}[weight_decay={lam:g}]"
      results[label] = arm(label, BASE + acc + jitter(), arm_name=name, swept={"weight_decay": lam})
  return results


def test_adam_buffers_analysis_best_lambda_and_range():
  l2, dec = adam_buffers.L2_GRID, adam_buffers.DECOUPLED_GRID
  results = sweep_results({
      "adam_l2": (l2, [0.00, 0.01, -0.05, -0.20]),      # best at 1e-2, only 2 of 4 within 2 pt
      "adamw": (dec, [0.025, 0.04, 0.035, 0.03]),       # flat: 4 of 4 within 2 pt
      "l2_0_1_1": (l2, [0.02, 0.04, 0.03, 0.0]),
      "l2_0_0_1": (l2, [0.02, 0.045, 0.03, 0.0]),
      "l2_1_0_0": (l2, [0.0, 0.012, -0.05, -0.2]),
  })
  claims, table = adam_buffers.analyze(results, adam_buffers.make_config(True))
  verdicts = {c.id: c.verdict for c in claims}
  assert verdicts == {"Z3": "reproduced", "B5a": "reproduced", "B5b": "reproduced", "B5c": "reproduced",
                      "B5d": "reproduced"}
  z3 = next(c for c in claims if c.id == "Z3")
  assert z3.effect.mean == pytest.approx(3.0, abs=0.2)          # 4 pt (adamw at dec[1]) − 1 pt (adam_l2 at 1e-2)
  assert f"best λ: adamw {dec[1]:g}, adam_l2 0.01" in z3.notes
  b5a = next(c for c in claims if c.id == "B5a")
  assert b5a.effect.mean == pytest.approx(1.0 - 0.5)
  assert f"| adamw | {dec[0]:g}:" in table


# --- validity checks on synthetic results: collapsed arms and unbracketed optima --------------------------------

def diverge(result, *, accuracy=0.102, step=150):
  """Marks every member of ``result`` diverged at ``step`` (as train.on_nan=continue logs it), scoring one class."""
  n = len(result.seeds)
  result.series["test_accuracy"][:, -1] = accuracy
  marks = np.full((n, len(result.steps)), np.nan)
  marks[:, -1] = step
  result.series["diverged_at"] = marks


ADAM_PAPER_WORLD = {
    "adam_l2": [0.00, 0.01, -0.05, -0.20],
    "adamw": [0.025, 0.04, 0.035, 0.03],
    "l2_0_1_1": [0.02, 0.04, 0.03, 0.0],
    "l2_0_0_1": [0.02, 0.045, 0.03, 0.0],
    "l2_1_0_0": [0.0, 0.012, -0.05, -0.2],
}


def adam_world(**curves):
  shapes = dict(ADAM_PAPER_WORLD, **curves)
  grids = {name: adam_buffers.DECOUPLED_GRID if name == "adamw" else adam_buffers.L2_GRID for name in shapes}
  return sweep_results({name: (grids[name], shapes[name]) for name in shapes})


def test_adam_buffers_claim_whose_compared_arms_all_diverged_is_invalid():
  # Every member of both arms of B5c diverged and scores one class (10.2%): the two arms "match" exactly,
  # which the interval alone calls reproduced.
  results = adam_world()
  for r in results.values():
    if r.arm in ("adamw", "l2_0_0_1"):
      diverge(r)
  claims = {c.id: c for c in adam_buffers.analyze(results, adam_buffers.make_config(True))[0]}
  b5c = claims["B5c"]
  assert b5c.verdict == report.INVALID
  assert b5c.interval_verdict == report.REPRODUCED and b5c.verdict_text == "invalid (compared arms diverged or at chance)"
  assert "invalid: compared arms diverged or at chance" in b5c.notes
  assert "l2_0_0_1[weight_decay=" in b5c.notes and "8 of 8 diverged" in b5c.notes
  # B5b compares a healthy arm with the collapsed adamw: a real comparison, not invalid.
  assert claims["B5b"].verdict != report.INVALID
  assert claims["B5d"].verdict == report.REPRODUCED  # neither of its arms is touched


def test_early_decay_claim_whose_compared_arms_sit_at_chance_is_invalid_but_one_healthy_arm_keeps_its_verdict():
  results = {
      "none": arm("none", BASE, norms=np.tile([20.0, 30.0], (8, 1))),
      "always": arm("always", 0.10 + jitter(0.003), norms=np.tile([10.0, 9.0], (8, 1))),   # at chance, 10 classes
      "early25": arm("early25", BASE + 0.035 + jitter(), norms=np.tile([10.0, 14.0], (8, 1))),
      "early50": arm("early50", 0.10 + jitter(0.003), norms=np.tile([10.0, 12.0], (8, 1))),  # at chance
      "late50": arm("late50", BASE + jitter(), norms=np.tile([20.0, 15.0], (8, 1))),
  }
  claims = {c.id: c for c in early_decay.analyze(results, early_decay.make_config(True))[0]}
  # early50 ≈ always, both at chance: the interval says reproduced, but nothing was measured.
  assert claims["B1b"].verdict == report.INVALID and claims["B1b"].interval_verdict == report.REPRODUCED
  assert "always: 8 of 8 at chance" in claims["B1b"].notes
  # always (at chance) against none (healthy): an ordinary verdict, decay lost ~40 points.
  assert claims["B1a"].verdict == report.NOT_REPRODUCED and claims["B1a"].reason == ""
  assert claims["B1d"].verdict == report.REPRODUCED  # late50 ≈ none, both healthy


def test_a_few_degenerate_members_keep_the_verdict_and_are_named_in_the_notes():
  results = early_decay_world_where_the_paper_is_right()
  results["early50"].series["test_accuracy"][:3, -1] = 0.1  # 3 of 8 at chance: not a majority
  b1b = next(c for c in early_decay.analyze(results, early_decay.make_config(True))[0] if c.id == "B1b")
  assert b1b.verdict == b1b.interval_verdict != report.INVALID
  assert "early50: 3 of 8 at chance" in b1b.notes


def test_adam_buffers_best_lambda_on_the_grid_edge_is_inconclusive():
  # AdamW keeps improving up to the largest λ of its grid: its optimum is not bracketed.
  results = adam_world(adamw=[0.0, 0.01, 0.03, 0.05])
  claims = {c.id: c for c in adam_buffers.analyze(results, adam_buffers.make_config(True))[0]}
  top = max(adam_buffers.DECOUPLED_GRID)
  z3 = claims["Z3"]
  assert z3.verdict == report.INCONCLUSIVE
  assert z3.interval_verdict == report.REPRODUCED  # 5 pt against adam_l2's 1 pt
  assert z3.verdict_text == "inconclusive (optimum at grid edge)"
  assert f"adamw's best weight_decay = {top:g} is the top of its grid" in z3.notes
  for id_ in ("B5a", "B5b", "B5c"):  # every comparison with AdamW's best
    assert claims[id_].verdict == report.INCONCLUSIVE and "optimum at grid edge" in claims[id_].reason, id_
  assert claims["B5d"].verdict == report.REPRODUCED and claims["B5d"].reason == ""
  # The interior optimum of the paper world is not flagged.
  assert all(c.reason == "" for c in adam_buffers.analyze(adam_world(), adam_buffers.make_config(True))[0])


def test_every_claim_names_the_arms_it_compared():
  results = adam_world()
  for c in adam_buffers.analyze(results, adam_buffers.make_config(True))[0]:
    assert c.compared and all(h.members > 0 for h in c.compared), c.id
  results = {label: arm(label, BASE + jitter(), norms=np.tile([10.0, 12.0], (8, 1))) for label in early_decay.ARMS}
  for c in early_decay.analyze(results, early_decay.make_config(True))[0]:
    assert c.compared and all(h.members == 8 for h in c.compared), c.id


def test_adam_buffers_variants_without_l2_in_the_second_moment_step_boundedly_where_the_gradient_vanishes():
  # At a zero loss gradient the literal (0, 0, 1) and (1, 0, 0) updates divide λw by ε (for (1, 0, 0),
  # m̂ = λw after bias correction): w moves by ηλw/ε. The study's arms carry the floor φ to the optimizer the
  # harness builds, so the first step is ηλw/(φ + ε); the variants with L2 in v keep the literal formula.
  import jax.numpy as jnp
  import optax
  import wd_optax

  config = adam_buffers.make_config(quick=True)
  w, lam, eta = 0.5, 0.1, 1e-3
  params, zero_grad = {"w": jnp.full((3,), w)}, {"w": jnp.zeros(3)}
  rates = {"learning_rate": eta, "weight_decay": lam, "decoupled_weight_decay": 0.0, "peak_learning_rate": eta}

  def first_step(tx):
    return float(jnp.abs(tx.update(zero_grad, tx.init(params), params)[0]["w"]).max())

  checked = 0
  for arm in config.arms:
    optim = config.arm_optim(arm)
    if optim.name != "adam_buffers":
      continue
    literal = optax.chain(
        wd_optax.scale_by_adam_l2(lam, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                                  l2_in_first_moment=optim.l2_in_first_moment,
                                  l2_in_second_moment=optim.l2_in_second_moment,
                                  l2_preconditioned=optim.l2_preconditioned),
        optax.scale_by_learning_rate(eta))
    step = first_step(optim.build(rates))
    if optim.l2_in_second_moment:
      assert optim.preconditioner_floor == 0.0 and step == first_step(literal), arm.name
    else:
      assert optim.preconditioner_floor == adam_buffers.PRECONDITIONER_FLOOR > 0, arm.name
      assert first_step(literal) > 1e3 * w, arm.name  # the hazard the floor removes
      np.testing.assert_allclose(step, eta * lam * w / (optim.preconditioner_floor + optim.eps), rtol=1e-5,
                                 err_msg=arm.name)
      checked += 1
  assert checked == 2  # l2_0_0_1 and l2_1_0_0


def test_preconditioner_floor_must_be_a_finite_non_negative_number():
  config = adam_buffers.make_config(quick=True)
  config.arms[2].optim["preconditioner_floor"] = -1e-3
  with pytest.raises(ValueError, match=r"arms\.l2_0_1_1\.preconditioner_floor must be a finite number >= 0"):
    config_lib.validate(config)
