"""``early_decay``: when does weight decay need to act? (Bjorck et al. 2021 B1, B2; Golatkar et al. 2019.)

Arms (SGD with momentum, coupled L2 on every parameter of a BatchNorm MLP): no decay, decay throughout,
decay during the first 25% / 50% of the steps only, and decay during the last 50% only. All five differ only
in λ and the window of steps where it acts, so all arms × seeds are one vmapped program.

Claims tested (docs/papers.md §7):

* B1 — decay only for the first ~25–50% of steps lands close to decay throughout; late-only ≈ none.
* B2 — after early decay stops, ‖w‖ of the scale-invariant layers stays far below the no-decay run.
"""

from __future__ import annotations

import numpy as np

from experiments import config as config_lib
from experiments import report
from experiments.studies import Study
from experiments.studies import _common

ARMS = ("none", "always", "early25", "early50", "late50")

# Smallest effects that count (accuracy points) and equivalence margins, fixed before running.
MIN_GAIN = 0.5
MARGIN = 1.5


def make_config(quick: bool) -> config_lib.ExperimentConfig:
  config = _common.bn_mlp_config("early_decay", quick)
  config.arms = [
      config_lib.Arm("none", {"weight_decay": 0.0}),
      config_lib.Arm("always"),
      config_lib.Arm("early25", {"decay_end": 0.25}),
      config_lib.Arm("early50", {"decay_end": 0.5}),
      config_lib.Arm("late50", {"decay_start": 0.5}),
  ]
  return config


def analyze(results, config):
  acc = lambda *labels: _common.aligned(results, *labels)
  none, always, early25, early50, late50 = acc(*ARMS)
  gain = report.paired_ci(always, none)
  claims = [
      report.directional_claim(
          "B1a", "Decay throughout beats no decay (precondition of B1).", "acc(always) − acc(none)", gain,
          min_effect=MIN_GAIN, unit=" pt"),
      report.equivalence_claim(
          "B1b", "Decay for the first 50% of steps lands close to decay throughout.",
          "acc(early50) − acc(always)", report.paired_ci(early50, always), margin=MARGIN, unit=" pt"),
      report.directional_claim(
          "B1c", "Decay for the first 25% of steps recovers most (> half) of the gain of decay throughout.",
          "[acc(early25) − acc(none)] − ½[acc(always) − acc(none)]",
          report.mean_ci((early25 - none) - 0.5 * (always - none)), min_effect=0.0, unit=" pt",
          notes=f"mean gains over none: early25 {np.mean(early25 - none):+.2f}, always {np.mean(always - none):+.2f}"),
      report.equivalence_claim(
          "B1d", "Decay only in the second half does about as little as none.", "acc(late50) − acc(none)",
          report.paired_ci(late50, none), margin=MARGIN, unit=" pt"),
  ]
  norms = _common.aligned(results, "none", "early25", "early50", metric="norm/scale_invariant",
                          transform=_common.ident)
  ratio = report.mean_ci(np.log(norms[0] / norms[1]))
  claims.append(report.directional_claim(
      "B2", "After early decay stops, ‖w‖ of the scale-invariant layers stays far below the no-decay run.",
      "ln(‖w_si‖ none / ‖w_si‖ early25) at the last step", ratio, min_effect=float(np.log(1.25)),
      notes=(f"final ‖w_si‖: none {np.mean(norms[0]):.3g}, early25 {np.mean(norms[1]):.3g}, early50 "
             f"{np.mean(norms[2]):.3g} (ratio none/early25 = {np.exp(ratio.mean):.2f}, counts if ≥ 1.25)")))
  return claims, _common.arm_table(results, list(ARMS))


STUDY = Study(
    name="early_decay",
    title="early_decay — when decay acts (Bjorck et al. B1, B2)",
    setting=(
        "SGD (η = 0.1 with a cosine decay to 0, momentum 0.9) with coupled L2 (λ = 5e-3) on an MLP whose hidden layers feed "
        "BatchNorm without affine parameters, on MNIST-1D with 20% label noise. The hidden kernels are exactly "
        "scale-invariant, so decay acts on them through η/‖w‖² only. λ is larger than the CIFAR default (5e-4) "
        "so that decay changes ‖w‖ within the few thousand steps a CPU run affords (the shrink per step is "
        "ηλ/(1−μ) = 5e-3). Windows are fractions of the run: early25 = steps [0, 25%), early50 = [0, 50%), "
        "late50 = [50%, 100%). Seeds are paired across arms (same init and batches)."),
    make_config=make_config,
    analyze=analyze,
)
