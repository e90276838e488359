"""The fixnorm study's analysis on synthetic per-seed results whose right answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments import optimizers
from experiments.studies import fixnorm as study
from experiments.train import make_groups
from experiments.train.metrics import ArmResult

SEEDS = 8
QUICK = study.GRIDS[True]
STEPS = np.arange(50, 550, 50)


def _world(accuracy, *, decay_shift=0.0, angle_power=1.0, seed=0):
  """ArmResults for every label of the quick config: final accuracy from ``accuracy(arm, swept)`` plus small
  per-seed noise; the scale-invariant layers' angle = 10·(η_t/c²)**angle_power over a cosine schedule."""
  rng = np.random.default_rng(seed)
  config = study.make_config(True)
  config.seeds = SEEDS
  lr_shape = 0.5 * (1 + np.cos(np.pi * STEPS / 500.0)) + 1e-4
  results = {}
  for group in make_groups(config):
    for label in dict.fromkeys(m.label for m in group.members):
      member = next(m for m in group.members if m.label == label)
      acc = accuracy(member.arm, member.swept) + (decay_shift if member.arm == "fixnorm_decay" else 0.0)
      final = acc + 0.001 * rng.standard_normal(SEEDS)
      test = np.full((SEEDS, len(STEPS)), np.nan)
      test[:, -1] = final
      series = {"test_accuracy": test, "train_accuracy": np.ones((SEEDS, len(STEPS))),
                "angle/scale_invariant": np.full((SEEDS, len(STEPS)), 0.01)}
      eta = member.hp["learning_rate"] * lr_shape
      for layer, norm in (("layers/0/kernel", 11.0), ("layers/1/kernel", 11.5)):
        eff = np.tile(eta / norm**2, (SEEDS, 1))
        series[f"eff_lr/{layer}"] = eff
        series[f"angle/{layer}"] = 10.0 * eff**angle_power * np.exp(0.01 * rng.standard_normal(eff.shape))
      results[label] = ArmResult(label=label, arm=member.arm, seeds=list(range(SEEDS)), swept=member.swept,
                                 steps=STEPS, series=series)
  return results, config


def _paper_world(arm, swept):
  """Separable in (log η, log c), peaked at η = 0.2, c = 1.5; tuned SGD+decay 0.5 pt below FixNorm's best."""
  if arm == "sgd":
    return 0.595 - 0.05 * abs(math.log10(swept["learning_rate"] / 0.1)) \
        - 0.03 * abs(math.log10(swept["weight_decay"] / 5e-3))
  c = QUICK["default_norm"] if arm == "fixnorm_decay" else float(arm[len("fixnorm_c"):].replace("p", "."))
  return 0.60 - 0.04 * abs(math.log(swept["learning_rate"] / 0.2)) - 0.05 * abs(math.log(c / 1.5))


def test_analysis_reproduces_every_claim_in_a_world_where_the_paper_is_right():
  results, config = _world(_paper_world)
  claims, table = study.analyze(results, config)
  verdicts = {c.id: c.verdict for c in claims}
  assert verdicts == {"F1a": "reproduced", "F1b": "reproduced", "F2a": "reproduced", "F2b": "reproduced",
                      "F3a": "reproduced", "F3b": "reproduced"}
  f1a = next(c for c in claims if c.id == "F1a")
  assert f1a.effect.mean == pytest.approx(0.5, abs=0.1)  # 60.0 − 59.5 points on held-out seeds
  assert "η=0.2, c=1.5" in f1a.notes and "held-out seeds [2, 3, 4, 5, 6, 7]" in f1a.notes
  assert f1a.effect.n == SEEDS - 2
  f2b = next(c for c in claims if c.id == "F2b")
  assert f2b.effect.mean == pytest.approx(100 * 0.05 * math.log(13.5 / 1.5), abs=0.1)
  assert "fixnorm_c1p5[learning_rate=0.2]" in table
  assert all(c.compared and c.reason == "" for c in claims)  # healthy arms, interior optima
  assert [h.members for h in f1a.compared] == [SEEDS - 2, SEEDS - 2]  # the held-out seeds only


def test_analysis_rejects_the_claims_in_a_world_where_the_paper_is_wrong():
  def monotone_in_c(arm, swept):  # accuracy keeps rising with c; SGD+decay clearly better
    if arm == "sgd":
      return 0.65 - 0.05 * abs(math.log10(swept["learning_rate"] / 0.1))
    c = QUICK["default_norm"] if arm == "fixnorm_decay" else float(arm[len("fixnorm_c"):].replace("p", "."))
    return 0.55 - 0.04 * abs(math.log(swept["learning_rate"] / 0.2)) + 0.01 * math.log(c)

  # Decay on top costs 3 points, and the angle grows like (η_t/c²)^0.5 instead of proportionally.
  results, config = _world(monotone_in_c, decay_shift=-0.03, angle_power=0.5)
  claims = {c.id: c for c in study.analyze(results, config)[0]}
  verdicts = {i: c.verdict for i, c in claims.items()}
  # FixNorm's tuned c is the largest of its grid: an unbracketed optimum, so F1a cannot be decided, whatever
  # the interval says (it alone would say "not reproduced": SGD+decay is 10 points better).
  assert verdicts["F1a"] == "inconclusive" and claims["F1a"].interval_verdict == "not reproduced"
  assert "optimum at grid edge" in claims["F1a"].reason
  assert f"FixNorm's best classifier_norm = {max(QUICK['classifier_norms']):g} is the top" in claims["F1a"].notes
  assert verdicts["F2b"] == "not reproduced"   # the peak is the largest norm: nothing beyond it is worse
  assert verdicts["F3a"] == "not reproduced"
  assert verdicts["F3b"] == "not reproduced"


def test_fixnorm_arms_train_as_one_program_and_carry_their_classifier_norm():
  config = study.make_config(True)
  groups = make_groups(config)
  fixnorm_groups = [g for g in groups if g.optim.name == "fixnorm"]
  assert len(fixnorm_groups) == 1
  norms = {m.arm: m.hp["classifier_norm"] for m in fixnorm_groups[0].members}
  assert norms == {**{study._fixnorm_arm(c): c for c in QUICK["classifier_norms"]},
                   "fixnorm_decay": QUICK["default_norm"]}
  # The members carry exactly the fixnorm family's traced fields (the classifier norm is its own, not carried
  # in another family's field).
  assert all(set(m.hp) == set(optimizers.FixNorm.TRACED) for m in fixnorm_groups[0].members)
  assert all("." not in a.name for a in config.arms)


@pytest.mark.parametrize("decay_window", [(0.0, 1.0), (0.5, 1.0)])
def test_each_member_is_projected_to_its_own_classifier_norm(decay_window):
  """One step of the study's transform from a member's config and rates: the classifier kernel ends at the
  member's norm c, the scale-invariant kernel keeps its norm — also on steps outside the decay window."""
  import dataclasses
  import jax
  import jax.numpy as jnp

  config = study.make_config(True)
  config.optim = dataclasses.replace(config.optim, decay_start=decay_window[0], decay_end=decay_window[1])
  group = next(g for g in make_groups(config, seeds=[0]) if g.optim.name == "fixnorm")
  keys = jax.random.split(jax.random.key(0), 4)
  params = {"layers": {"0": {"kernel": jax.random.normal(keys[0], (6, 5))}},
            "classifier": {"kernel": jax.random.normal(keys[1], (5, 3)), "bias": jnp.zeros(3)}}
  grads = {"layers": {"0": {"kernel": jax.random.normal(keys[2], (6, 5))}},
           "classifier": {"kernel": jax.random.normal(keys[3], (5, 3)), "bias": jnp.ones(3)}}

  @jax.jit
  def one_step(hp):
    rates = group.optim.rates_at(hp, jnp.int32(0), config.train.steps)
    tx = group.optim.build(rates)
    updates, _ = tx.update(grads, tx.init(params), params)
    return jax.tree.map(lambda p, u: p + u, params, updates)

  for member in group.members:
    new = one_step({k: jnp.float32(v) for k, v in member.hp.items()})
    np.testing.assert_allclose(jnp.linalg.norm(new["classifier"]["kernel"]), member.hp["classifier_norm"],
                               rtol=1e-5, err_msg=member.label)
    np.testing.assert_allclose(jnp.linalg.norm(new["layers"]["0"]["kernel"]),
                               jnp.linalg.norm(params["layers"]["0"]["kernel"]), rtol=1e-5, err_msg=member.label)


@pytest.mark.parametrize("quick", [True, False])
def test_the_analysis_reads_the_grids_back_from_the_config(quick):
  config = study.make_config(quick)
  design = study.Design.from_config(config)
  grids = study.GRIDS[quick]
  assert design.fixnorm_lrs == sorted(grids["fixnorm_lrs"])
  assert design.classifier_norms == sorted(grids["classifier_norms"])
  assert (design.default_norm, design.decay_on_top) == (grids["default_norm"], grids["decay_on_top"])
  assert (design.sgd_lrs, design.sgd_decays) == (sorted(grids["sgd_lrs"]), sorted(grids["sgd_decays"]))
