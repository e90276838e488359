"""The harness examples of docs/harness.md run as documented: the Lion family against optax.lion, the study's
config and analysis on synthetic results whose answer is known."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _tol import assert_close_scaled

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "docs", "examples"))
import lion_family  # noqa: E402
import lion_study  # noqa: E402

from experiments import config as config_lib  # noqa: E402
from experiments.train import make_groups  # noqa: E402
from experiments.train.metrics import ArmResult  # noqa: E402


def test_lion_family_is_optax_lion_with_its_weight_decay():
  spec = lion_family.Lion(learning_rate=1e-2, b1=0.8, b2=0.95)
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.arange(4.0)}
  rates = {"learning_rate": jnp.float32(1e-2), "weight_decay": jnp.float32(0.5), "peak_learning_rate": 1e-2}
  ours, reference = spec.build(rates), optax.lion(1e-2, b1=0.8, b2=0.95, weight_decay=0.5)
  p_ours, p_ref = params, params
  s_ours, s_ref = ours.init(params), reference.init(params)
  for t in range(3):
    grads = jax.tree.map(lambda x: jnp.cos(x * (t + 1)), p_ours)
    u, s_ours = ours.update(grads, s_ours, p_ours)
    p_ours = optax.apply_updates(p_ours, u)
    u, s_ref = reference.update(jax.tree.map(lambda x: jnp.cos(x * (t + 1)), p_ref), s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
  for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
    assert_close_scaled(a, b, c=100, scale="tree")


def test_lion_study_config_is_one_program_and_refuses_a_field_lion_lacks():
  config = lion_study.make_config(True)
  config_lib.validate(config)
  (group,) = make_groups(config, seeds=[0])
  assert group.optim.name == "lion" and len(group.members) == 1 + len(lion_study.GRID)
  config_lib.apply_override(config, "arms.none.b1=0.5")
  with pytest.raises(KeyError, match=r"optimizer 'lion' has no field 'momentum'.*'b1'"):
    config_lib.apply_override(config, "arms.none.momentum=0.5")


def _results(accuracy_by_lambda, seeds=6):
  rng = np.random.default_rng(0)
  out = {}
  points = [("none", "none", {}, accuracy_by_lambda[0.0])]
  points += [(f"decoupled[weight_decay={lam:g}]", "decoupled", {"weight_decay": lam}, accuracy_by_lambda[lam])
             for lam in lion_study.GRID]
  for label, arm, swept, acc in points:
    test = np.full((seeds, 2), np.nan)
    test[:, -1] = acc + 0.002 * rng.standard_normal(seeds)
    out[label] = ArmResult(label=label, arm=arm, seeds=list(range(seeds)), swept=swept, steps=np.array([50, 100]),
                           series={"test_accuracy": test, "train_accuracy": np.ones((seeds, 2)),
                                   "train_loss": np.ones((seeds, 2))})
  return out


def test_lion_study_analysis_finds_a_known_gain_and_flags_an_edge_optimum():
  config = lion_study.make_config(True)
  (claim,), _ = lion_study.analyze(_results({0.0: 0.50, 0.1: 0.51, 1.0: 0.55, 10.0: 0.52}), config)
  assert claim.verdict == "reproduced" and claim.effect.mean == pytest.approx(5.0, abs=0.5)
  (claim,), _ = lion_study.analyze(_results({0.0: 0.50, 0.1: 0.51, 1.0: 0.52, 10.0: 0.55}), config)
  assert claim.verdict == "inconclusive"   # the best λ is the grid's top: not bracketed
