"""A study in one file: does decoupled decay help Lion? (the example of docs/harness.md)."""

import numpy as np

import lion_family  # the family's file beside this one; importing it registers "lion"
from experiments import config as config_lib
from experiments import report
from experiments.studies import Study, _common

GRID = [0.1, 1.0, 10.0]


def make_config(quick: bool) -> config_lib.ExperimentConfig:
  config = _common.bn_mlp_config("lion_decay", quick)   # MNIST-1D, BN MLP, cosine lr
  config.optim = lion_family.Lion(learning_rate=3e-4, lr_schedule="cosine")
  config.arms = [config_lib.Arm("none", {"weight_decay": 0.0}),
                 config_lib.Arm("decoupled", sweep={"weight_decay": GRID})]   # one vmapped program
  return config


def analyze(results, config):
  tuned = _common.best_of_sweep(results, "decoupled",
                                {l: float(np.mean(_common.final_accuracy(results, l))) for l in results})
  gain = np.subtract(*_common.aligned(results, tuned.label, "none"))
  claim = report.directional_claim(
      "L1", "Decoupled decay (tuned λ) improves Lion's test accuracy.", "acc(decoupled, best λ) − acc(none)",
      report.mean_ci(gain), min_effect=0.5, unit=" pt", edges=tuned.edges,
      compared=_common.health(results, config, tuned.label, "none"))
  return [claim], _common.arm_table(results)


STUDY = Study(name="lion_decay", title="lion_decay — decoupled decay for Lion", make_config=make_config,
              analyze=analyze, setting="Lion on the BatchNorm MLP, no decay vs decoupled decay over a λ grid.")
