"""``three_mechanisms``: weight decay under K-FAC (Zhang, Wang, Xu & Grosse 2019, docs/papers.md §4–5, §7 Z4–Z6).

Arms: {SGD, Adam, KFAC-F, KFAC-G} × {no decay, coupled L2, decoupled decay} × {no normalisation, BatchNorm},
named ``<optimizer>_<decay>_<net>``, e.g. ``kfacf_decoupled_bn``. One MLP on MNIST-1D with label noise.

How the design maps onto the harness:

* **BatchNorm by model config.** Each arm names its network with a ``model`` override (:func:`arm_model`):
  ``norm="batch_noaffine"`` (BN without scale and shift, as in Zhang et al., so every hidden kernel is
  scale-invariant) or ``norm=None``; both are ``experiments.models.MLP`` with registered ``wd_optax.kfac.Linear``
  layers (``model.registered_layers``), so every arm of a seed starts from the same weights.
* **One optimizer family per optimizer** (:func:`arm_optim`): ``sgd``, ``adam`` and ``kfac`` with
  ``curvature="fisher"`` (KFAC-F) or ``"ggn"`` (KFAC-G), all with ``decay="l2+decoupled"`` and the two traced
  rates ``weight_decay`` (coupled L2) and ``decoupled_weight_decay``, so no decay, L2 and decoupled decay are
  one vmapped program per optimizer and network.
* **Curvature in the one backward pass.** The ``kfac`` family's ``value_and_grad`` gets the member's model and
  computes loss, gradients and factors with ``wd_optax.kfac.value_grad_and_curvature``.
* **Effective damping on the real state.** The ``kfac`` family logs γ‖W‖² and cos(K-FAC direction, gradient)
  from its own optimizer state (``wd_optax.kfac.effective_damping``) at the last step of every logged chunk.
  The input-Jacobian norm E‖J_x‖²_F uses ``wd_optax.diagnostics.jacobian_norm`` in inference mode at every
  evaluation (the study's ``eval_metrics`` hook).

Claims tested (docs/papers.md §7):

* Z4 — K-FAC without normalisation: decay gains more than for SGD, and lowers E‖J_x‖²_F.
* Z5 — K-FAC with BN, no decay: γ_eff = γ‖W‖² grows by orders of magnitude and cos(direction, gradient) → 1;
  with decay both stay bounded.
* Z6 — K-FAC with coupled L2 is much weaker than with decoupled decay.

References:
  Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
  Martens & Grosse. *Optimizing Neural Networks with Kronecker-factored Approximate Curvature.* ICML 2015.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from experiments import config as config_lib
from experiments import optimizers
from experiments import report
from experiments.studies import Study
from experiments.studies import _common
from experiments.train import Hooks
from wd_optax.diagnostics import jacobian_norm

OPTIMIZERS = ("sgd", "adam", "kfacf", "kfacg")
# Quick mode keeps what the claims need most within its ~90 s budget: SGD (Z4's reference) and KFAC-F.
QUICK_OPTIMIZERS = ("sgd", "kfacf")
DECAYS = ("none", "l2", "decoupled")
NETS = ("plain", "bn")
KFAC_MODES = {"kfacf": "fisher", "kfacg": "ggn"}
PRETTY = {"sgd": "SGD", "adam": "Adam", "kfacf": "KFAC-F", "kfacg": "KFAC-G"}
# Per optimizer: peak η (cosine schedule) and the λ used for both the L2 and the decoupled arm.
SETTINGS = {
    "sgd": dict(learning_rate=0.1, weight_decay=5e-3),
    "adam": dict(learning_rate=3e-3, weight_decay=1e-1),
    "kfacf": dict(learning_rate=3e-2, weight_decay=1e-1),
    "kfacg": dict(learning_rate=3e-2, weight_decay=1e-1),
}
DAMPING = 1e-3
KL_CLIP = 1e-2
FACTOR_EMA = 0.95   # K-FAC factor averaging (the library's default, passed explicitly so the report can say it)
INVERSE_EVERY = 10  # K-FAC: steps between damped-inverse refreshes
# Matmul-only inverses: a vmapped LAPACK inverse inside the scanned, vmapped training step deadlocked the
# CPU backend here (every thread waiting) for a population of 18 members.
INVERSE = "newton_schulz"
JACOBIAN_EXAMPLES = 64
JACOBIAN_PROBES = 2
MIN_GAIN = 0.5               # points: smallest accuracy difference that counts
MIN_GROWTH = float(np.log(10.0))   # Z5: "orders of magnitude" counts from a factor 10
MIN_JACOBIAN_DROP = 1.25     # Z4c/d: decay lowers E‖J_x‖²_F by at least this factor
MIN_BOUND = float(np.log(2.0))     # Z5: decay keeps γ_eff at least 2x below no decay
MIN_COSINE = 0.05            # Z5: the cosine rises at least this much more without decay


def arm_name(optimizer: str, decay: str, net: str) -> str:
  return f"{optimizer}_{decay}_{net}"


def arm_optim(optimizer: str, decay: str) -> dict:
  """The arm's optimizer: its family (``sgd``, ``adam``, ``kfac`` with its curvature), η, λ and where λ enters.

  Every arm has ``decay="l2+decoupled"``: coupled L2 at rate ``weight_decay`` (K-FAC-"l2": preconditioned with
  the gradient) followed by lr-coupled decoupled decay at rate ``decoupled_weight_decay`` (K-FAC-"wd"), one of
  them λ and the other 0 (both 0: no decay), so the three decay arms of an optimizer and network share one
  program. With one rate 0 this is exactly ``decay="l2"`` or ``decay="decoupled"`` (the library chains them
  the same way).
  """
  s = SETTINGS[optimizer]
  lam = s["weight_decay"]
  fields = {"learning_rate": s["learning_rate"], "decay": "l2+decoupled",
            "weight_decay": lam if decay == "l2" else 0.0,
            "decoupled_weight_decay": lam if decay == "decoupled" else 0.0}
  if optimizer in KFAC_MODES:
    return {"name": "kfac", "curvature": KFAC_MODES[optimizer], "damping": DAMPING, "kl_clip": KL_CLIP,
            "ema": FACTOR_EMA, "inverse_every": INVERSE_EVERY, "inverse": INVERSE, **fields}
  return {"name": optimizer, **fields}


def arm_model(net: str) -> dict:
  """The arm's network: the base MLP with BatchNorm without affine parameters (``bn``) or without any
  normalisation (``plain``, where the hidden layers carry biases)."""
  return {"norm": "batch_noaffine" if net == "bn" else None}


def make_config(quick: bool) -> config_lib.ExperimentConfig:
  config = config_lib.ExperimentConfig(
      name="three_mechanisms",
      data=config_lib.DataConfig(name="mnist1d", n_train=4000, n_test=1000, label_noise=0.2, seed=0),
      # Registered K-FAC layers in every arm's model, so that all arms start from the same weights per seed.
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", registered_layers=True,
                                   kwargs={"hidden": [64, 64] if quick else [128, 128]}),
      optim=optimizers.SGD(learning_rate=0.1, lr_schedule="cosine", momentum=0.9, decay="l2", decay_mask="all"),
      train=config_lib.TrainConfig(steps=200 if quick else 3000, batch_size=128, log_every=50 if quick else 100,
                                   eval_every=50 if quick else 200, checkpoint_every=0, on_nan="continue"),
      seeds=6 if quick else 8,
      arms=[])
  for optimizer in QUICK_OPTIMIZERS if quick else OPTIMIZERS:
    for net in NETS:
      for decay in DECAYS:
        config.arms.append(config_lib.Arm(arm_name(optimizer, decay, net), arm_optim(optimizer, decay),
                                          model=arm_model(net)))
  return config


def optimizer_of(spec: optimizers.OptimizerSpec) -> str:
  """The study's name (:data:`OPTIMIZERS`) of an arm's optimizer spec."""
  if spec.name == "kfac":
    return {mode: name for name, mode in KFAC_MODES.items()}.get(spec.curvature, "kfac")
  return spec.name


def eval_metrics(apply, params, model_state, x, y) -> dict:
  """E‖J_x‖²_F of the logits with respect to the inputs (inference mode, ``wd_optax.diagnostics.jacobian_norm``)."""
  del y
  logits_fn = lambda p, xs: apply(p, model_state, xs, False)[0]
  return {"jacobian_norm": jacobian_norm(logits_fn, params, x[:JACOBIAN_EXAMPLES], jax.random.key(0),
                                        num_probes=JACOBIAN_PROBES).value}


def hooks(config: config_lib.ExperimentConfig) -> Hooks:
  del config
  return Hooks(eval_metrics=eval_metrics)


# ----------------------------------------------------------------------------------------------------------
# Analysis


def _hidden_layers(result) -> list[str]:
  return sorted(k[len("gamma_eff/"):] for k in result.series
                if k.startswith("gamma_eff/") and k != "gamma_eff/classifier")


def _first_last(result, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """Per seed: the first and last logged finite values of ``metric``."""
  series = np.asarray(result.series[metric], np.float64)
  first, last = [], []
  for row in series:
    finite = np.flatnonzero(np.isfinite(row))
    first.append(row[finite[0]] if finite.size else np.nan)
    last.append(row[finite[-1]] if finite.size else np.nan)
  return np.array(first), np.array(last)


def _mean_over_layers(result, prefix: str, reduce=np.nanmean, which: int = 1) -> np.ndarray:
  layers = _hidden_layers(result)
  values = np.stack([_first_last(result, f"{prefix}/{layer}")[which] for layer in layers], axis=0)
  return reduce(values, axis=0)


def _per_seed(results, label: str, values: np.ndarray, seeds: list[int]) -> np.ndarray:
  r = results[label]
  return np.array([values[r.seeds.index(s)] for s in seeds])


def _final_mean(results, label: str, metric: str) -> str:
  r = results[label]
  return f"{np.nanmean(r.final(metric)):.3g}" if metric in r.series else "—"


def analyze(results, config):
  seeds = sorted(set.intersection(*(set(r.seeds) for r in results.values())))
  acc = {label: _per_seed(results, label, _common.pct(r.final("test_accuracy")), seeds)
         for label, r in results.items()}
  claims = []
  arms = lambda *labels: _common.health(results, config, *labels, seeds=seeds)

  present = lambda optimizer: all(arm_name(optimizer, d, n) in results for d in DECAYS for n in NETS)
  if present("sgd"):
    # SGD's reference gain: the decay placement with the larger mean gain (Zhang et al. compare tuned runs).
    sgd_gains = {d: acc[arm_name("sgd", d, "plain")] - acc[arm_name("sgd", "none", "plain")]
                 for d in ("l2", "decoupled")}
    sgd_decay = max(sgd_gains, key=lambda d: np.mean(sgd_gains[d]))
    sgd_gain = sgd_gains[sgd_decay]
  for optimizer, tag in (("kfacf", "a"), ("kfacg", "b")):
    if not present(optimizer) or not present("sgd"):
      continue
    name = PRETTY[optimizer]
    gain = acc[arm_name(optimizer, "decoupled", "plain")] - acc[arm_name(optimizer, "none", "plain")]
    claims.append(report.directional_claim(
        f"Z4{tag}", f"{name}, no normalisation: decay gains more than for SGD.",
        f"[acc({optimizer} decoupled) − acc({optimizer} none)] − [acc(SGD {sgd_decay}) − acc(SGD none)], plain MLP",
        report.mean_ci(gain - sgd_gain), min_effect=MIN_GAIN, unit=" pt",
        compared=arms(arm_name(optimizer, "decoupled", "plain"), arm_name(optimizer, "none", "plain"),
                      arm_name("sgd", sgd_decay, "plain"), arm_name("sgd", "none", "plain")),
        notes=f"{name} gain {np.mean(gain):+.2f} pt; SGD gains: L2 {np.mean(sgd_gains['l2']):+.2f}, decoupled "
              f"{np.mean(sgd_gains['decoupled']):+.2f} pt (the larger is the reference)."))
  for optimizer, tag in (("kfacf", "c"), ("kfacg", "d")):
    if not present(optimizer):
      continue
    j = lambda decay: _per_seed(results, arm_name(optimizer, decay, "plain"),
                                results[arm_name(optimizer, decay, "plain")].final("jacobian_norm"), seeds)
    none, dec = j("none"), j("decoupled")
    claims.append(report.directional_claim(
        f"Z4{tag}", f"{PRETTY[optimizer]}, no normalisation: decay lowers E‖J_x‖²_F.",
        f"ln(E‖J_x‖²_F none / decoupled) at the end, {optimizer} plain MLP",
        report.mean_ci(np.log(none / dec)), min_effect=float(np.log(MIN_JACOBIAN_DROP)),
        compared=arms(arm_name(optimizer, "none", "plain"), arm_name(optimizer, "decoupled", "plain")),
        notes=f"final E‖J_x‖²_F: none {np.mean(none):.4g}, decoupled {np.mean(dec):.4g} (counts from a "
              f"{MIN_JACOBIAN_DROP:g}x reduction; {JACOBIAN_EXAMPLES} test inputs, inference mode, "
              f"{JACOBIAN_PROBES} Gaussian probe{'s' if JACOBIAN_PROBES != 1 else ''})"))

  cos_key = "cos"
  for optimizer, tag in (("kfacf", ("a", "b", "c")), ("kfacg", ("d", "e", "f"))):
    if not present(optimizer):
      continue
    none_r = results[arm_name(optimizer, "none", "bn")]
    dec_r = results[arm_name(optimizer, "decoupled", "bn")]
    growth = lambda r: _per_seed(results, r.label, np.log(_mean_over_layers(r, "gamma_eff", which=1)
                                                          / _mean_over_layers(r, "gamma_eff", which=0)), seeds)
    g_none, g_dec = growth(none_r), growth(dec_r)
    claims.append(report.directional_claim(
        f"Z5{tag[0]}", f"{PRETTY[optimizer]} with BN, no decay: γ_eff = γ‖W‖² grows by orders of magnitude.",
        "ln(γ_eff last / first evaluation), hidden layers' mean, no decay",
        report.mean_ci(g_none), min_effect=MIN_GROWTH, compared=arms(none_r.label),
        notes=f"growth factor no decay ×{np.exp(np.mean(g_none)):.3g}, decoupled ×{np.exp(np.mean(g_dec)):.3g} "
              f"(counts from ×{np.exp(MIN_GROWTH):.3g})"))
    last = lambda r: _per_seed(results, r.label, _mean_over_layers(r, "gamma_eff"), seeds)
    claims.append(report.directional_claim(
        f"Z5{tag[1]}", f"{PRETTY[optimizer]} with BN: with decay γ_eff stays bounded (far below no decay).",
        "ln(γ_eff none / γ_eff decoupled) at the end, hidden layers' mean",
        report.mean_ci(np.log(last(none_r) / last(dec_r))), min_effect=MIN_BOUND,
        compared=arms(none_r.label, dec_r.label),
        notes=f"final γ_eff: none {np.mean(last(none_r)):.3g}, decoupled {np.mean(last(dec_r)):.3g} (γ={DAMPING:g})"))
    cos = lambda r: _per_seed(results, r.label, _mean_over_layers(r, cos_key), seeds)
    claims.append(report.directional_claim(
        f"Z5{tag[2]}", f"{PRETTY[optimizer]} with BN: without decay cos(K-FAC direction, gradient) → 1, with decay not.",
        "final cos(none) − cos(decoupled), hidden layers' mean",
        report.mean_ci(cos(none_r) - cos(dec_r)), min_effect=MIN_COSINE,
        compared=arms(none_r.label, dec_r.label),
        notes=f"final cosine: none {np.mean(cos(none_r)):.3f}, decoupled {np.mean(cos(dec_r)):.3f}; first "
              f"evaluation (no decay) {np.mean(_per_seed(results, none_r.label, _mean_over_layers(none_r, cos_key, which=0), seeds)):.3f}"))

  for optimizer, tag in (("kfacf", "a"), ("kfacg", "b")):
    if not present(optimizer):
      continue
    for net in NETS:
      dec, l2 = acc[arm_name(optimizer, "decoupled", net)], acc[arm_name(optimizer, "l2", net)]
      none = acc[arm_name(optimizer, "none", net)]
      claims.append(report.directional_claim(
          f"Z6{tag}{'-bn' if net == 'bn' else ''}", f"{PRETTY[optimizer]} ({net}): coupled L2 is much weaker than decoupled decay.",
          f"acc({optimizer} decoupled) − acc({optimizer} L2), {net} MLP, same λ",
          report.paired_ci(dec, l2), min_effect=MIN_GAIN, unit=" pt",
          compared=arms(arm_name(optimizer, "decoupled", net), arm_name(optimizer, "l2", net)),
          notes=f"gains over no decay: decoupled {np.mean(dec - none):+.2f}, L2 {np.mean(l2 - none):+.2f} pt; "
                f"final E‖J_x‖²_F decoupled {_final_mean(results, arm_name(optimizer, 'decoupled', net), 'jacobian_norm')}"
                f", L2 {_final_mean(results, arm_name(optimizer, 'l2', net), 'jacobian_norm')} (one λ for both "
                "placements, not tuned per placement: preconditioned L2 also shrinks low-curvature directions "
                "fast, so a collapsed L2 run counts against L2 here)"))

  labels = [arm_name(o, d, n) for n in NETS for o in OPTIMIZERS for d in DECAYS if arm_name(o, d, n) in results]
  table = _common.arm_table(results, labels, extra={"jacobian_norm": "final E‖J_x‖²_F",
                                                    "gamma_eff/layers/0": "final γ_eff layer 0",
                                                    "cos/layers/0": "final cos(U, G) layer 0"})
  return claims, table


def plots(results, config, outdir: str) -> list[str]:
  """γ_eff and cos(direction, gradient) over time for the K-FAC BN arms; E‖J_x‖²_F for the plain arms.

  Each arm in its style of the study's :class:`~experiments.train.plots.StyleMap` (the same as in the
  accuracy and loss figures); per seed the mean over hidden layers, then mean over seeds with a min–max band.
  """
  from experiments.train import plots as plots_lib
  styles = plots_lib.StyleMap.from_config(config)
  plt = plots_lib._pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), layout="constrained")
  index = 0
  cos_key = "cos"
  for optimizer in ("kfacf", "kfacg"):
    for decay in DECAYS:
      label = arm_name(optimizer, decay, "bn")
      r = results.get(label)
      if r is None:
        continue
      layers = _hidden_layers(r)
      if not layers or f"{cos_key}/{layers[0]}" not in r.series:
        continue
      gamma = np.nanmean(np.stack([r.series[f"gamma_eff/{l}"] for l in layers]), axis=0)   # (seeds, steps)
      cos = np.nanmean(np.stack([r.series[f"{cos_key}/{l}"] for l in layers]), axis=0)
      keep = np.isfinite(gamma).any(axis=0)
      style = styles.arm(label)
      plots_lib.draw_series(axes[0], r.steps[keep], gamma[:, keep], style, label=label, gid=label, index=index)
      plots_lib.draw_series(axes[1], r.steps[keep], cos[:, keep], style, label=label, gid=label, index=index)
      index += 1
  for optimizer in OPTIMIZERS:
    for decay in ("none", "decoupled"):
      label = arm_name(optimizer, decay, "plain")
      r = results.get(label)
      if r is None or "jacobian_norm" not in r.series:
        continue
      j = r.series["jacobian_norm"]
      keep = np.isfinite(j).any(axis=0)
      plots_lib.draw_series(axes[2], r.steps[keep], j[:, keep], styles.arm(label), label=label, gid=label,
                            index=index)
      index += 1
  for ax, title in zip(axes, ("BatchNorm arms: γ_eff = γ‖W‖² (mean over hidden layers)",
                              "BatchNorm arms: cos(K-FAC direction, gradient)",
                              "no-normalisation arms: E‖J_x‖²_F (test inputs)")):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_lines():
      plots_lib.legend_outside(ax, where="below", ncol=2)
  axes[0].set_yscale("log")
  axes[2].set_yscale("log")
  fig.suptitle(f"Z5 (left, middle) and Z4 (right): {plots_lib.BAND_NOTE}", fontsize=10)
  return [plots_lib.save_figure(fig, os.path.join(outdir, "three_mechanisms_damping_jacobian.png"))]


def trained_optimizers(config: config_lib.ExperimentConfig) -> list[str]:
  """The optimizers of :data:`OPTIMIZERS` that ``config`` trains, in that order."""
  names = {optimizer_of(config.arm_optim(a)) for a in config.arms}
  return [o for o in OPTIMIZERS if o in names]


_DESCRIPTION = {"kfacf": "KFAC-F (true Fisher, sampled targets)", "kfacg": "KFAC-G (Gauss–Newton, identity output "
                "Hessian)"}


def setting(config: config_lib.ExperimentConfig) -> str:
  """The setting for ``config``: only the optimizers, η and λ that its arms train."""
  trained = trained_optimizers(config)
  optims = {a.name: config.arm_optim(a) for a in config.arms}
  decays = [d for d in DECAYS if any(arm_name(o, d, n) in optims for o in trained for n in NETS)]
  nets = [n for n in NETS if any(arm_name(o, d, n) in optims for o in trained for d in DECAYS)]
  per_optimizer = []
  for o in trained:
    arms_of = [optims[arm_name(o, d, n)] for d in decays for n in nets if arm_name(o, d, n) in optims]
    lrs = sorted({a.learning_rate for a in arms_of})
    lams = sorted({lam for a in arms_of for lam in (a.weight_decay, a.decoupled_weight_decay) if lam})
    per_optimizer.append(f"{PRETTY[o]}: η={'/'.join(f'{v:g}' for v in lrs)}, "
                         f"λ={'/'.join(f'{v:g}' for v in lams) or '—'}")
  decay_words = {"none": "no decay", "l2": "coupled L2", "decoupled": "decoupled decay (lr-coupled)"}
  net_words = {"plain": "no normalisation", "bn": "BatchNorm without affine parameters"}
  untrained = [PRETTY[o] for o in OPTIMIZERS if o not in trained]
  kfac_trained = [o for o in trained if o in KFAC_MODES]
  momentum = sorted({optims[a].momentum for a in optims if optims[a].name in ("sgd", "kfac")})
  d, t = config.data, config.train
  text = (
      f"MLP (ReLU, registered `wd_optax.kfac.Linear` layers) on MNIST-1D with {100 * d.label_noise:g}% label "
      f"noise, {config.optim.lr_schedule} learning rate, momentum {'/'.join(f'{m:g}' for m in momentum)} "
      f"({', '.join(PRETTY[o] for o in trained if o != 'adam')}), batch {t.batch_size}. Arms: "
      f"{{{', '.join(_DESCRIPTION.get(o, PRETTY[o]) for o in trained)}}} × "
      f"{{{', '.join(decay_words[x] for x in decays)}}} × {{{', '.join(net_words[x] for x in nets)}}}"
      + (f" ({', '.join(untrained)} not trained in this mode)" if untrained else "")
      + f"; per optimizer one η and one λ for both the L2 and the decoupled arm ({', '.join(per_optimizer)}), "
      "chosen by hand for a short run, not tuned.")
  if kfac_trained:
    text += (f" K-FAC: damping γ={DAMPING:g} (π-split), factor EMA {FACTOR_EMA:g}, inverses every "
             f"{INVERSE_EVERY} steps, KL clip {KL_CLIP:g} (as in Zhang et al.'s code).")
  text += (
      " The BN and plain arms are two models (the arm's `model.norm`), with the same initial weights per seed."
      f" E‖J_x‖²_F on {JACOBIAN_EXAMPLES} test inputs in inference mode ({JACOBIAN_PROBES} Gaussian "
      f"probe{'s' if JACOBIAN_PROBES != 1 else ''}) at every evaluation; γ_eff = γ‖W‖² and cos(K-FAC direction, "
      "gradient) of each K-FAC arm's own optimizer state (`wd_optax.kfac.effective_damping`: the averaged "
      "factors and the last update of training) at the last step of every logged chunk; the curvature comes "
      "from the training step's one forward and backward pass (`wd_optax.kfac.value_grad_and_curvature`). "
      "Z4 compares K-FAC's decoupled gain to SGD's better decay placement (larger mean gain). Seeds are paired.")
  return text


STUDY = Study(
    name="three_mechanisms",
    title="three_mechanisms — weight decay under K-FAC (Zhang et al. Z4–Z6)",
    setting=setting,
    make_config=make_config,
    analyze=analyze,
    hooks=hooks,
    optimizers=("sgd", "adam", "kfac"),
    plots=plots,
)
