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
MIN_NORM_RATIO = 1.25  # B2: ‖w_si‖ without decay at least this many times the early-decay one


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
  arms = lambda *labels: _common.health(results, config, *labels)
  none, always, early25, early50, late50 = acc(*ARMS)
  gain = report.paired_ci(always, none)
  claims = [
      report.directional_claim(
          "B1a", "Decay throughout beats no decay (precondition of B1).", "acc(always) − acc(none)", gain,
          min_effect=MIN_GAIN, unit=" pt", compared=arms("always", "none")),
      report.equivalence_claim(
          "B1b", f"Decay for the first {_window('early50', config)} of steps lands close to decay throughout.",
          "acc(early50) − acc(always)", report.paired_ci(early50, always), margin=MARGIN, unit=" pt",
          compared=arms("early50", "always")),
      report.directional_claim(
          "B1c", f"Decay for the first {_window('early25', config)} of steps recovers most (> half) of the gain "
          "of decay throughout.",
          "[acc(early25) − acc(none)] − ½[acc(always) − acc(none)]",
          report.mean_ci((early25 - none) - 0.5 * (always - none)), min_effect=0.0, delta=MIN_GAIN, unit=" pt",
          compared=arms("early25", "none", "always"),
          notes=f"mean gains over none: early25 {np.mean(early25 - none):+.2f}, always {np.mean(always - none):+.2f}"),
      report.equivalence_claim(
          "B1d", "Decay only in the second half does about as little as none.", "acc(late50) − acc(none)",
          report.paired_ci(late50, none), margin=MARGIN, unit=" pt", compared=arms("late50", "none")),
  ]
  norms = _common.aligned(results, "none", "early25", "early50", metric="norm/scale_invariant",
                          transform=_common.ident)
  ratio = report.mean_ci(np.log(norms[0] / norms[1]))
  claims.append(report.directional_claim(
      "B2", "After early decay stops, ‖w‖ of the scale-invariant layers stays far below the no-decay run.",
      "ln(‖w_si‖ none / ‖w_si‖ early25) at the last step", ratio, min_effect=float(np.log(MIN_NORM_RATIO)),
      compared=arms("none", "early25"),
      notes=(f"final ‖w_si‖: none {np.mean(norms[0]):.3g}, early25 {np.mean(norms[1]):.3g}, early50 "
             f"{np.mean(norms[2]):.3g} (ratio none/early25 = {np.exp(ratio.mean):.2f}, counts if ≥ "
             f"{MIN_NORM_RATIO:g})")))
  return claims, _common.arm_table(results, list(ARMS))


def _window(arm: str, config) -> str:
  """The length of an arm's decay window as a percentage of the run, e.g. ``"25%"``."""
  o = config.arm_optim(next(a for a in config.arms if a.name == arm))
  return f"{100 * (o.decay_end - o.decay_start):g}%"


def setting(config) -> str:
  o, d = config.optim, config.data
  optims = {a.name: config.arm_optim(a) for a in config.arms}
  windows = ", ".join(f"{a} = steps [{100 * optims[a].decay_start:g}%, {100 * optims[a].decay_end:g}%)"
                      for a in ("early25", "early50", "late50") if a in optims)
  shrink = o.learning_rate * o.weight_decay / (1.0 - o.momentum)
  return (
      f"SGD (η = {o.learning_rate:g} with a {o.lr_schedule} decay to 0, momentum {o.momentum:g}) with coupled "
      f"L2 (λ = {o.weight_decay:g}) on an MLP whose hidden layers feed BatchNorm without affine parameters, on "
      f"MNIST-1D with {100 * d.label_noise:g}% label noise. The hidden kernels are exactly scale-invariant, so "
      "decay acts on them through η/‖w‖² only. λ is larger than the CIFAR default (5e-4) so that decay changes "
      f"‖w‖ within the few thousand steps a CPU run affords (the shrink per step is ηλ/(1−μ) = {shrink:.3g}). "
      f"Windows are fractions of the run: {windows}. Seeds are paired across arms (same init and batches).")


STUDY = Study(
    name="early_decay",
    title="early_decay — when decay acts (Bjorck et al. B1, B2)",
    setting=setting,
    make_config=make_config,
    analyze=analyze,
)
