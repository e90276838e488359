"""``decay_placement``: which parameters need decay, and can an lr schedule replace it? (Zhang et al. 2019 Z1, Z2.)

Arms (SGD with momentum, coupled L2, BatchNorm MLP): no decay; decay on every parameter; decay on every layer
but the classifier ("conv", the scale-invariant hidden layers here); decay on the classifier only; and no
decay with the learning rate η_t = η·‖w_t‖²/‖w_0‖² over the scale-invariant weights (Z2), which holds the
effective learning rate η/‖w‖² of those layers at its initial value the way decay would hold it down.

Claims tested (docs/papers.md §7):

* Z1 — decay beats no decay; decay on the hidden layers ≈ decay everywhere ≫ decay on the classifier only;
  ‖w_hidden‖ keeps growing without decay and plateaus with it.
* Z2 — no decay but η_t ∝ ‖w_t‖² recovers most of the gain.
"""

from __future__ import annotations

import numpy as np

from experiments import config as config_lib
from experiments import report
from experiments.studies import Study
from experiments.studies import _common

ARMS = ("none", "all", "conv", "classifier", "norm_sq_lr")
MIN_GAIN = 0.5
MARGIN = 1.5
MIN_GROWTH = 0.05  # Z1d: ln growth of ‖w_si‖ over the second half, none − all


def make_config(quick: bool) -> config_lib.ExperimentConfig:
  config = _common.bn_mlp_config("decay_placement", quick)
  config.arms = [
      config_lib.Arm("none", {"weight_decay": 0.0}),
      config_lib.Arm("all", {"decay_mask": "all"}),
      config_lib.Arm("conv", {"decay_mask": "conv"}),
      config_lib.Arm("classifier", {"decay_mask": "classifier"}),
      config_lib.Arm("norm_sq_lr", {"weight_decay": 0.0, "lr_norm_sq": True}),
  ]
  return config


def _growth(results, label: str) -> np.ndarray:
  """ln(‖w_si‖ at the end / ‖w_si‖ at mid-training), per seed."""
  r = results[label]
  series = r.series["norm/scale_invariant"]
  mid = int(np.argmin(np.abs(r.steps - r.steps[-1] / 2)))
  return np.log(series[:, -1] / series[:, mid])


def analyze(results, config):
  arms = lambda *labels: _common.health(results, config, *labels)
  none, all_, conv, classifier, norm_sq = _common.aligned(results, *ARMS)
  gain = all_ - none
  claims = [
      report.directional_claim("Z1a", "Decay (on all parameters) beats no decay.", "acc(all) − acc(none)",
                               report.paired_ci(all_, none), min_effect=MIN_GAIN, unit=" pt",
                               compared=arms("all", "none")),
      report.equivalence_claim("Z1b", "Decay on the hidden (scale-invariant) layers only ≈ decay everywhere.",
                               "acc(conv) − acc(all)", report.paired_ci(conv, all_), margin=MARGIN, unit=" pt",
                               compared=arms("conv", "all")),
      report.directional_claim("Z1c", "Decay on the hidden layers ≫ decay on the classifier only.",
                               "acc(conv) − acc(classifier)", report.paired_ci(conv, classifier),
                               min_effect=MIN_GAIN, unit=" pt", compared=arms("conv", "classifier")),
  ]
  growth_none, growth_all = _growth(results, "none"), _growth(results, "all")
  claims.append(report.directional_claim(
      "Z1d", "‖w_hidden‖ keeps growing without decay and plateaus with it.",
      "ln growth of ‖w_si‖ over the second half: none − all", report.paired_ci(growth_none, growth_all),
      min_effect=MIN_GROWTH, compared=arms("none", "all"),
      notes=f"second-half growth factor: none ×{np.exp(np.mean(growth_none)):.3f}, "
            f"all ×{np.exp(np.mean(growth_all)):.3f}"))
  claims.append(report.directional_claim(
      "Z2", "No decay but η_t ∝ ‖w_t‖² recovers most (> half) of the gain of decay.",
      "[acc(norm_sq_lr) − acc(none)] − ½[acc(all) − acc(none)]",
      report.mean_ci((norm_sq - none) - 0.5 * gain), min_effect=0.0, delta=MIN_GAIN, unit=" pt",
      compared=arms("norm_sq_lr", "none", "all"),
      notes=f"mean gains over none: norm_sq_lr {np.mean(norm_sq - none):+.2f}, all {np.mean(gain):+.2f}"))
  return claims, _common.arm_table(results, list(ARMS), extra={"norm/scale_invariant": "final ‖w_si‖",
                                                               "norm/classifier/kernel": "final ‖w_classifier‖",
                                                               "lr": "final η"})


def setting(config) -> str:
  o, d = config.optim, config.data
  return (
      "Same network, data and SGD as `early_decay` (BatchNorm MLP without affine BN parameters on MNIST-1D with "
      f"{100 * d.label_noise:g}% label noise; η = {o.learning_rate:g} {o.lr_schedule}, momentum {o.momentum:g}, "
      f"coupled L2 λ = {o.weight_decay:g}). The hidden kernels play the role of "
      "Zhang et al.'s conv layers (scale-invariant); `classifier` is the final linear layer (kernel and bias). "
      "`norm_sq_lr` has no decay and multiplies the schedule by ‖w_t‖²/‖w_0‖², recomputed every step "
      "from the current norm of all scale-invariant kernels (one global factor, also applied to the "
      "classifier), so η_t/‖w_t‖² follows the schedule as it would if the norm stayed at its initial value.")


STUDY = Study(
    name="decay_placement",
    title="decay_placement — which parameters decay, and decay vs an lr schedule (Zhang et al. Z1, Z2)",
    setting=setting,
    make_config=make_config,
    analyze=analyze,
)
