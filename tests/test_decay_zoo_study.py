"""The decay_zoo study's analysis on synthetic results: tuned picks on tuning seeds, verdicts on held-out seeds,
the grid-edge check, the ranking, and the equilibrium-angle prediction against its formula."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments import config as config_lib
from experiments.studies import decay_zoo
from experiments.train import make_groups
from experiments.train.metrics import ArmResult

STEPS = np.array([60, 120, 180, 240])
SEEDS = 4


def _world(level, shape, seed=0):
  """Every label of the quick config; final test accuracy (fraction) = ``level[method]`` + ``shape[method][i]`` at
  the i-th grid point, plus 0.1-point noise per seed. Default: 0.5 everywhere, peaked in the middle of the grid."""
  rng = np.random.default_rng(seed)
  config = decay_zoo.make_config(True)
  results = {}
  for group in make_groups(config):
    for m in group.members:
      if m.label in results:
        continue
      setting, method = m.arm.split("_", 1)
      knob = decay_zoo.BY_NAME[method].knob
      index = 0
      if knob:
        values = next(a for a in config.arms if a.name == m.arm).sweep[knob]
        index = values.index(m.swept[knob])
      acc = level.get((setting, method), 0.5) + shape.get((setting, method), (-0.01, 0.0, -0.01))[index]
      test = np.full((SEEDS, len(STEPS)), np.nan)
      test[:, -1] = acc + 0.001 * rng.standard_normal(SEEDS)
      lr = np.tile(np.linspace(3e-3, 1e-4, len(STEPS)), (SEEDS, 1))
      series = {"test_accuracy": test, "train_accuracy": np.ones((SEEDS, len(STEPS))),
                "train_loss": np.ones((SEEDS, len(STEPS))), "lr": lr,
                # what the step logs: the family's gated weight_decay (the L2 rate, in the mixed Adam program)
                "weight_decay": np.full_like(lr, m.swept.get("weight_decay", 0.0)),
                "angle/layers/0/kernel": np.full_like(lr, 0.01), "angle/layers/1/kernel": np.full_like(lr, 0.02)}
      results[m.label] = ArmResult(label=m.label, arm=m.arm, seeds=list(range(SEEDS)), swept=dict(m.swept),
                                   steps=STEPS, series=series)
  return config, results


def test_config_is_one_program_per_family_and_setting_with_every_method():
  config = decay_zoo.make_config(True)
  config_lib.validate(config)
  groups = make_groups(config)
  assert len(groups) == 2 * 7   # none/Adam+L2/AdamW/cautious share the mixed-Adam program
  assert {m.arm for g in groups for m in g.members} == {decay_zoo.arm_name(s, m.name) for s in decay_zoo.SETTINGS
                                                       for m in decay_zoo.METHODS}
  for arm in config.arms:   # every grid has an interior point: a centred optimum is bracketable
    for values in arm.sweep.values():
      assert len(values) == 3 and values == sorted(values)


def test_verdicts_against_both_references_and_the_grid_edge():
  level = {("bn", "adamp"): 0.53, ("bn", "adams"): 0.47, ("bn", "sgd_l2"): 0.5}
  shape = {("bn", "rotational"): (0.0, 0.01, 0.02)}   # best at the top of its grid
  config, results = _world(level, shape)
  claims, table = decay_zoo.analyze(results, config)
  verdicts = {c.id: c.verdict for c in claims}
  assert verdicts["bn.adamp>adamw_lr"] == "reproduced"          # +3 pt
  assert verdicts["bn.adamp>sgd_l2"] == "reproduced"
  assert verdicts["bn.adams>adamw_lr"] == "not reproduced"      # −3 pt: confidently worse
  assert verdicts["bn.rotational>adamw_lr"] == "inconclusive"   # +2 pt, but the optimum is not bracketed
  assert "optimum at grid edge" in next(c for c in claims if c.id == "bn.rotational>adamw_lr").verdict_text
  assert verdicts["bn.cautious>adamw_lr"] == "inconclusive"     # the same accuracy: not resolved
  assert "bn.sgd_l2>sgd_l2" not in verdicts and "plain.adamw_lr>adamw_lr" not in verdicts
  assert len(claims) == 2 * (2 * (len(decay_zoo.METHODS) - 2) + 1)
  # The ranked table of the BN setting puts AdamP first and says where the ranking is resolved.
  bn = table.split("**MLP without normalisation**")[0]
  ranked = [line for line in bn.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
  assert "`adamp`" in ranked[0] and "`rotational`" in ranked[1] and "(grid edge)" in ranked[1]
  assert "resolved (paired interval above 0) between adamp > rotational" in table


def test_the_tuned_knob_is_picked_on_the_tuning_seeds_only():
  config, results = _world({}, {("bn", "adamw_lr"): (0.0, -0.01, 0.0)})
  arm = decay_zoo.arm_name("bn", "adamw_lr")
  low = min((l for l, r in results.items() if r.arm == arm), key=lambda l: results[l].swept["decoupled_weight_decay"])
  results[low].series["test_accuracy"][0, -1] += 0.2      # seed 0 (the tuning seed) prefers the smallest λ
  results[low].series["test_accuracy"][1:, -1] -= 0.2     # the held-out seeds do not
  picks, tuning, held = decay_zoo._picks(results, config)
  assert tuning == [0] and held == [1, 2, 3]
  pick = picks[("bn", "adamw_lr")]
  assert pick.label == low and pick.edges          # picked on seed 0, and on the grid's edge
  np.testing.assert_allclose(pick.heldout, 100 * results[low].final("test_accuracy")[1:])


def test_predicted_angle_is_the_equilibrium_formula():
  eta, lam, b1 = 3e-3, 5.0, decay_zoo.B1
  lr = np.full((2, 4), eta)
  result = ArmResult(label="x", arm="bn_rotational", seeds=[0, 1], swept={"weight_decay": lam}, steps=STEPS,
                     series={"lr": lr, "weight_decay": np.full_like(lr, lam),
                             "angle/layers/0/kernel": np.full_like(lr, 0.1)})
  want = np.sqrt(2 * eta * lam * (1 - b1) / (1 + b1))
  np.testing.assert_allclose(decay_zoo.predicted_angle(result, decay_zoo.BY_NAME["rotational"]), want, rtol=1e-6)
  # AdamW's rate in the mixed program is its swept decoupled rate (the logged weight_decay is the L2 one, 0).
  mixed = ArmResult(label="y", arm="bn_adamw_lr", seeds=[0, 1], swept={"decoupled_weight_decay": lam}, steps=STEPS,
                    series={"lr": lr, "weight_decay": np.zeros_like(lr)})
  np.testing.assert_allclose(decay_zoo.predicted_angle(mixed, decay_zoo.BY_NAME["adamw_lr"]), want, rtol=1e-6)
  sgd = dict(result.series, lr=np.full_like(lr, 0.1), weight_decay=np.full_like(lr, 0.01))
  got = decay_zoo.predicted_angle(ArmResult("z", "bn_sgd_l2", [0, 1], {}, STEPS, sgd), decay_zoo.BY_NAME["sgd_l2"])
  np.testing.assert_allclose(got, np.sqrt(2 * 0.1 * 0.01 / (1 + decay_zoo.MOMENTUM)), rtol=1e-6)
  assert decay_zoo.predicted_angle(result, decay_zoo.BY_NAME["adam_l2"]) is None   # no closed form
  measured, predicted = decay_zoo.angle_pair(result, decay_zoo.BY_NAME["rotational"])
  assert measured == pytest.approx(0.1) and predicted == pytest.approx(want, rel=1e-6)


def test_angle_plot_draws_one_marker_per_method_with_a_prediction(tmp_path):
  from experiments.train import plots as plots_lib
  config, results = _world({}, {})
  with plots_lib.keep_figures() as kept:
    (path,) = decay_zoo.plots(results, config, str(tmp_path))
    fig = kept[-1]
  assert path.endswith("decay_zoo_angles.png")
  with_prediction = {m.name for m in decay_zoo.METHODS if m.predict}
  for ax in fig.axes:
    gids = [line.get_gid() for line in ax.get_lines() if line.get_gid()]
    assert {results[g].arm.split("_", 1)[1] for g in gids} == with_prediction
  stripped = {l: dataclasses.replace(r, series={k: v for k, v in r.series.items() if k != "lr"})
              for l, r in results.items()}
  assert decay_zoo.plots(stripped, config, str(tmp_path)) == []   # nothing logged to compare
