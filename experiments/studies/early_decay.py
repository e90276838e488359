"""``early_decay``: when does weight decay need to act? (Bjorck et al. 2021 B1, B2; Golatkar et al. 2019.)

Arms (SGD with momentum, coupled L2 on every parameter of a BatchNorm MLP): no decay, decay throughout,
decay during the first 25% / 50% of the steps only, and decay during the last 50% only. All five differ only
in λ and the window of steps where it acts, so all arms × seeds are one vmapped program.

Claims tested (docs/papers.md §7):

* B1 — decay only for the first ~25–50% of steps lands close to decay throughout; late-only ≈ none.
* B2 — after early decay stops, ‖w‖ of the scale-invariant layers stays far below the no-decay run.
* B3 — raw-norm generalisation measures mis-rank {no decay, decay always, early decay}, while a scale-invariant
  measure ranks them like the test error. Every evaluation also measures, per member, on the first
  :data:`B3_EXAMPLES` test examples (``eval_metrics`` hook): Σ‖W‖² and Π σ_max(W) of the kernels (raw norms),
  the fixed-radius sharpness (raw, absolute radius :data:`RAW_RADIUS`) and the scale-invariant sharpness
  (radius :data:`RELATIVE_RADIUS` relative to each leaf's norm) from ``wd_optax.diagnostics``; the analysis
  takes each measure's Spearman ρ with the final test error over the arms {none, always, early25, early50}
  × seeds, with its BCa bootstrap interval over those pairs. The sharpness losses use batch statistics
  (``train=True``), so the hidden kernels are exactly scale-invariant in them, as in Bjorck et al.'s argument.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wd_optax import diagnostics
from wd_optax import masks

from experiments import config as config_lib
from experiments import report
from experiments.studies import Study
from experiments.studies import _common
from experiments.train import Hooks

ARMS = ("none", "always", "early25", "early50", "late50")

# Smallest effects that count (accuracy points) and equivalence margins, fixed before running.
MIN_GAIN = 0.5
MARGIN = 1.5
MIN_NORM_RATIO = 1.25  # B2: ‖w_si‖ without decay at least this many times the early-decay one

# B3: the arms ranked ({no decay, decay always, early decay}) and the measures, each logged as "b3/<name>".
B3_ARMS = ("none", "always", "early25", "early50")
B3_MEASURES = {  # name -> (claim id, what it is, scale-invariant?)
    "sq_norm": ("B3a", "Σ‖W‖² of the kernels", False),
    "spectral": ("B3b", "Π σ_max(W) of the kernels", False),
    "sharpness_raw": ("B3c", "fixed-radius sharpness", False),
    "sharpness_si": ("B3d", "scale-invariant sharpness", True),
}
# A measure "ranks like the test error" when Spearman's ρ(measure, test error) is at least this: half of a
# perfect ranking. It is also every B3 claim's δ: the interval on ρ must be narrower than ±0.5 to tell a
# useless measure (ρ ≈ 0) from one that ranks (ρ ≥ 0.5).
RHO_MIN = 0.5
B3_EXAMPLES = 512      # test examples per sharpness evaluation (of the first evaluation batch)
B3_SAMPLES = 4         # antithetic perturbation pairs per sharpness evaluation (2 forward passes each)
RELATIVE_RADIUS = 0.05  # scale-invariant sharpness: ε_ℓ = ρ‖w_ℓ‖ per leaf
RAW_RADIUS = 1.0        # fixed-radius sharpness: ‖ε‖ = ρ over all parameters (about 5% of the initial ‖w‖)


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
  claims += b3_claims(results, config)
  return claims, _common.arm_table(results, list(ARMS), extra={
      "norm/scale_invariant": "final ‖w_si‖", **{f"b3/{k}": f"final {v[1]}" for k, v in B3_MEASURES.items()}})


def eval_metrics(apply, params, model_state, x, y) -> dict:
  """B3's generalisation measures of one member (module docstring): two raw norms and two sharpnesses."""
  x, y = x[:B3_EXAMPLES], y[:B3_EXAMPLES]

  def loss(p, batch):
    logits = apply(p, model_state, batch[0], True)[0]  # batch statistics: hidden kernels scale-invariant
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  key = jax.random.key(0)  # the same directions for every member and evaluation
  return {
      "b3/sq_norm": diagnostics.sum_of_squared_norms(params, masks.kernels()),
      "b3/spectral": diagnostics.spectral_norm_product(params, masks.kernels(), num_iterations=20),
      "b3/sharpness_raw": diagnostics.fixed_radius_sharpness(loss, params, (x, y), key, radius=RAW_RADIUS,
                                                             num_samples=B3_SAMPLES).value,
      "b3/sharpness_si": diagnostics.scale_invariant_sharpness(loss, params, (x, y), key, radius=RELATIVE_RADIUS,
                                                               num_samples=B3_SAMPLES).value,
  }


def hooks(config) -> Hooks:
  del config
  return Hooks(eval_metrics=eval_metrics)


def b3_points(results) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
  """Test error (%) and the final value of every B3 measure per (arm, seed) of :data:`B3_ARMS` (paired seeds),
  with each point's arm."""
  errors = _common.aligned(results, *B3_ARMS, transform=lambda a: 100.0 - _common.pct(a))
  seeds = len(errors[0])
  measures = {name: np.concatenate(_common.aligned(results, *B3_ARMS, metric=f"b3/{name}", transform=_common.ident))
              for name in B3_MEASURES if all(f"b3/{name}" in results[a].series for a in B3_ARMS)}
  return np.concatenate(errors), measures, [a for a in B3_ARMS for _ in range(seeds)]


def b3_claims(results, config) -> list:
  """B3a–c: each raw measure does not rank like the test error (ρ < :data:`RHO_MIN`); B3d: the
  scale-invariant sharpness does (ρ ≥ :data:`RHO_MIN`). Measures missing from the results give no claim."""
  error, measures, _ = b3_points(results)
  compared = _common.health(results, config, *B3_ARMS)
  out = []
  for name, values in measures.items():
    tag, what, invariant = B3_MEASURES[name]
    rho = report.spearman_ci(values, error)
    per_arm = values.reshape(len(B3_ARMS), -1).mean(axis=1)
    notes = (f"{rho}, p = {rho.pvalue:.2g}, over {rho.n} (arm, seed) pairs of {', '.join(B3_ARMS)}; mean final "
             "value per arm: " + ", ".join(f"{a} {v:.3g}" for a, v in zip(B3_ARMS, per_arm))
             + "; see early_decay_b3_measures.png")
    if invariant:
      ci = report.Interval(rho.statistic, rho.low, rho.high, rho.n, "bootstrap")
      out.append(report.directional_claim(
          tag, f"A scale-invariant measure ({what}) ranks the runs like the test error.",
          f"Spearman ρ({what}, test error) over arms × seeds", ci, min_effect=RHO_MIN, compared=compared,
          notes=notes))
    else:
      # "Does not rank like the test error": ρ confidently below RHO_MIN, i.e. RHO_MIN − ρ > 0.
      ci = report.Interval(RHO_MIN - rho.statistic, RHO_MIN - rho.high, RHO_MIN - rho.low, rho.n, "bootstrap")
      out.append(report.directional_claim(
          tag, f"A raw measure ({what}) does not rank the runs like the test error.",
          f"{RHO_MIN:g} − Spearman ρ({what}, test error) over arms × seeds", ci, min_effect=0.0, delta=RHO_MIN,
          compared=compared, notes=notes))
  return out


def plots(results, config, outdir: str) -> list[str]:
  """B3: every measure's final value against the final test error, one point per (arm, seed)."""
  from experiments.train import plots as plots_lib
  error, measures, arms = b3_points(results)
  if not measures:
    return []
  styles = plots_lib.StyleMap.from_config(config)
  plt = plots_lib._pyplot()  # pylint: disable=protected-access
  fig, axes = plt.subplots(1, len(measures), figsize=(3.3 * len(measures), 3.4), layout="constrained",
                           squeeze=False)
  for ax, (name, values) in zip(axes[0], measures.items()):
    tag, what, invariant = B3_MEASURES[name]
    for arm in B3_ARMS:
      keep = np.array([a == arm for a in arms])
      style = styles.arm(arm)
      line, = ax.plot(values[keep], error[keep], linestyle="none", marker=style.marker, color=style.color,
                      markerfacecolor=style.color if style.filled else "none", markersize=6, label=arm)
      line.set_gid(arm)
    ax.set_xscale("log")
    ax.set_xlabel(f"{what}{' (scale-invariant)' if invariant else ' (raw)'}", fontsize=8)
    ax.set_title(f"{tag}: {report.spearman_ci(values, error)}", fontsize=8)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("final test error %")
  plots_lib.legend_outside(axes[0][-1])
  fig.suptitle("B3: generalisation measures against test error (one point per arm and seed; ρ with its "
               "bootstrap 95% CI)", fontsize=9)
  return [plots_lib.save_figure(fig, os.path.join(outdir, "early_decay_b3_measures.png"))]


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
    title="early_decay — when decay acts, and which measures see it (Bjorck et al. B1–B3)",
    setting=setting,
    make_config=make_config,
    analyze=analyze,
    hooks=hooks,
    plots=plots,
)
