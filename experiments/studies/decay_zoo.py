"""``decay_zoo``: the weight-decay methods side by side, each with its own knob tuned on equal terms.

Methods (:data:`METHODS`; each an optimizer family of :mod:`experiments.optimizers` with its knob swept):

* ``none`` — Adam without decay (the AdamW program with λ = 0);
* ``sgd_l2`` — SGD with momentum and coupled L2 (``sgd``, ``decay="l2"``);
* ``adamw_lr`` — AdamW with the decay coupled to η_t (``optax.adamw``);
* ``adam_l2`` — Adam on ∇L + λw;
* ``cautious`` — cautious AdamW: decay only where the step and the weight agree in sign;

  (these three and ``none`` are one program of the ``adam`` family, ``decay="l2+decoupled"``, ``cautious=True``,
  each sweeping
  one of its rates ``weight_decay`` / ``decoupled_weight_decay`` / ``cautious_weight_decay`` with the others 0;
  the other decoupled couplings, ``independent`` and ``corrected``, would each cost a program per setting and
  are left out of the quick form's budget);
* ``adamp`` — AdamP (``adamp``): the step's radial part removed on scale-invariant-looking weights, decay × 0.1 there;
* ``adams`` — AdamS (``adams``): the decay divided by √v̄, the root mean second moment;
* ``rotational`` — rotational AdamW (``rotational_adamw``): every neuron turns by the equilibrium angle
  η_r = √(2η_tλ(1−β₁)/(1+β₁)) from the first step, at a fixed norm;
* ``adamh`` — AdamH (``adamh``): Adam's direction, a relative step η_t, each matrix back on its sphere (knob: η);
* ``fixnorm`` — FixNorm (``fixnorm``): SGD with momentum, hidden kernels held at their initial norms, the
  classifier's at c (knob: η).

Settings (:data:`SETTINGS`): ``bn``, the quick BatchNorm MLP of ``_common.bn_mlp_config`` (hidden kernels
scale-invariant), and ``plain``, the same MLP without normalisation (no weight is scale-invariant, so the
mechanism the projection and rotation methods rely on is absent). Every method of both settings runs on the
same seeds (same initial weights and batches), one vmapped program per family and setting.

Equal terms. The decay is on the kernels only (``decay_mask="kernels"``: the leaves the rotation and sphere
methods act on) for every method; the Adam-type methods share one η, the SGD-type ones another, both with the
cosine schedule. Each knob's grid is :data:`GRID_POINTS` values a factor :data:`GRID_FACTOR` apart, centred
where the method's per-step shrink (or turn) equals that of a decay timescale τ = :data:`TAU_FRACTION` · T
(T the steps; ``wd_optax.timescale``): λ = 1/(ητ) for the lr-coupled decays, (1−μ)/(ητ) for SGD's L2, and the equilibrium angle θ* = √(2(1−β₁)/((1+β₁)τ)) as AdamH's η; Adam+L2 and AdamS
divide λ by a gradient scale, so their grids are centred :data:`PRECONDITIONED_SHIFT` lower (a guess, which
the grid-edge check polices); cautious decay skips part of the decay, so its grid is centred
:data:`CAUTIOUS_SHIFT` higher. FixNorm's η grid is centred on :data:`FIXNORM_LR`.

Tuning protocol (as ``fixnorm``): the knob is picked on the mean final test accuracy of the tuning seeds (the
first :func:`tuning_seed_count`), and every comparison is scored on the other, held-out seeds. A pick on the
edge of its grid makes each claim that uses it *inconclusive* (the optimum is not bracketed).

Output: per setting a ranked table (held-out accuracy with 95% t-intervals, each rank's paired gap to the
next with its interval, so the report says where the ranking is resolved and where not), the claims
``<setting>.<method> > adamw_lr`` and ``<setting>.<method> > sgd_l2`` (directional with smallest relevant
effect :data:`MIN_GAIN`: reproduced when the method is better, not reproduced when it is confidently worse),
and a plot of each method's measured angular update of the hidden kernels against its equilibrium prediction
(``wd_optax.diagnostics.equilibrium_angular_update``) over the second half of training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import numpy as np

from experiments import config as config_lib
from experiments import report
from experiments.studies import Study
from experiments.studies import _common
from wd_optax import diagnostics
from wd_optax import timescale

SETTINGS = {"bn": {}, "plain": {"norm": None}}   # setting -> model overrides
SETTING_TEXT = {"bn": "BatchNorm MLP", "plain": "MLP without normalisation"}
REFERENCES = ("adamw_lr", "sgd_l2")
ADAM_LR = 3e-3
SGD_LR = 0.1
MOMENTUM = 0.9
B1 = 0.9
CLASSIFIER_NORM = 1.5
TAU_FRACTION = 0.25       # the grid's centre: a decay timescale of a quarter of the run
GRID_FACTOR = 4.0
PRECONDITIONED_SHIFT = 1e-2
# Set after a first quick run (seed 0 tuning, as in the study) picked the top of the cautious and FixNorm grids
# centred at 1× and at SGD's η in both settings.
CAUTIOUS_SHIFT = 4.0
FIXNORM_LR = 0.4
MIN_GAIN = 0.5            # points: the smallest accuracy difference that counts (δ of every claim)
WD_RATIO = 0.1            # AdamP's decay multiplier on projected leaves (the library's default)


@dataclasses.dataclass(frozen=True)
class Method:
  """One method: its family overrides, the knob it sweeps, how its grid's centre follows from τ, and its
  equilibrium-angle prediction (``None``: no closed form)."""
  name: str
  title: str
  optim: dict
  knob: str
  centre: object          # (tau_iter) -> the knob's grid centre
  predict: str | None     # "sgd" | "adamw" | "adamp" | "adamh" | None


# Adam + L2, AdamW and cautious AdamW (and no decay) are one program: decay="l2+decoupled" with one of its three
# rates swept and the other two 0.
_ADAM = {"name": "adam", "decay": "l2+decoupled", "cautious": True, "learning_rate": ADAM_LR, "b1": B1,
         "weight_decay": 0.0, "decoupled_weight_decay": 0.0, "cautious_weight_decay": 0.0}
_LR_COUPLED = lambda tau: timescale.weight_decay_from_timescale(ADAM_LR, tau, steps_per_epoch=1)
METHODS = (
    Method("none", "no decay (Adam)", dict(_ADAM), "", None, None),
    Method("sgd_l2", "SGD + L2", {"name": "sgd", "decay": "l2", "learning_rate": SGD_LR, "momentum": MOMENTUM},
           "weight_decay", lambda tau: (1 - MOMENTUM) / (SGD_LR * tau), "sgd"),
    Method("adamw_lr", "AdamW (λ coupled to η_t)", dict(_ADAM), "decoupled_weight_decay", _LR_COUPLED, "adamw"),
    Method("adam_l2", "Adam + L2", dict(_ADAM), "weight_decay", lambda tau: PRECONDITIONED_SHIFT * _LR_COUPLED(tau),
           None),
    # Cautious decay skips the coordinates whose step opposes the weight, so its grid sits CAUTIOUS_SHIFT higher.
    Method("cautious", "cautious AdamW", dict(_ADAM), "cautious_weight_decay",
           lambda tau: CAUTIOUS_SHIFT * _LR_COUPLED(tau), "adamw"),
    Method("adamp", "AdamP", {"name": "adamp", "learning_rate": ADAM_LR, "b1": B1, "wd_ratio": WD_RATIO},
           "weight_decay", _LR_COUPLED, "adamp"),
    Method("adams", "AdamS", {"name": "adams", "learning_rate": ADAM_LR, "b1": B1}, "weight_decay",
           lambda tau: PRECONDITIONED_SHIFT * _LR_COUPLED(tau), None),
    Method("rotational", "rotational AdamW", {"name": "rotational_adamw", "learning_rate": ADAM_LR, "b1": B1},
           "weight_decay", _LR_COUPLED, "adamw"),
    Method("adamh", "AdamH", {"name": "adamh", "weight_decay": 0.0, "b1": B1}, "learning_rate",
           lambda tau: float(diagnostics.equilibrium_angular_update(1.0, 1.0 / tau, B1, optimizer="adamw")),
           "adamh"),
    Method("fixnorm", "FixNorm", {"name": "fixnorm", "weight_decay": 0.0, "momentum": MOMENTUM,
                                  "classifier_norm": CLASSIFIER_NORM}, "learning_rate", lambda tau: FIXNORM_LR, None),
)
BY_NAME = {m.name: m for m in METHODS}


def arm_name(setting: str, method: str) -> str:
  return f"{setting}_{method}"


def grid(method: Method, steps: int, points: int) -> list[float]:
  """The knob's grid: ``points`` values ``GRID_FACTOR`` apart around the method's centre for τ = TAU_FRACTION·T."""
  centre = method.centre(TAU_FRACTION * steps)
  offsets = np.arange(points) - (points - 1) / 2
  return [float(f"{centre * GRID_FACTOR ** o:.3g}") for o in offsets]


def make_config(quick: bool) -> config_lib.ExperimentConfig:
  config = _common.bn_mlp_config("decay_zoo", quick)
  config.model.kwargs = {"hidden": [64, 64]} if quick else {"hidden": [256, 256]}
  config.seeds = 4 if quick else 10
  config.train.steps = 240 if quick else 3000
  config.train.log_every = 20 if quick else 100
  config.train.eval_every = 240 if quick else 500
  config.train.on_nan = "continue"   # an extreme grid point may diverge; it is then scored, not fatal
  config.optim = dataclasses.replace(config.optim, decay_mask="kernels", weight_decay=0.0)
  points = 3 if quick else 5
  config.arms = []
  for setting, model in SETTINGS.items():
    for m in METHODS:
      sweep = {m.knob: grid(m, config.train.steps, points)} if m.knob else {}
      config.arms.append(config_lib.Arm(arm_name(setting, m.name), dict(m.optim), sweep, dict(model)))
  return config


def tuning_seed_count(num_seeds: int) -> int:
  return max(1, num_seeds // 4)


@dataclasses.dataclass
class Pick:
  """One method's tuned label in one setting, with its held-out accuracy."""
  setting: str
  method: Method
  label: str
  point: dict
  edges: tuple
  heldout: np.ndarray


def _picks(results, config) -> tuple[dict, list, list]:
  """``{(setting, method): Pick}``, the tuning seeds and the held-out seeds."""
  seeds = sorted(set.intersection(*(set(r.seeds) for r in results.values())))
  k = tuning_seed_count(len(seeds))
  tuning, held = seeds[:k], seeds[k:]

  def acc(label, which):
    r = results[label]
    return _common.pct(r.final("test_accuracy")[[r.seeds.index(s) for s in which]])

  arms = {a.name for a in config.arms}
  picks = {}
  for setting in SETTINGS:
    for m in METHODS:
      arm = arm_name(setting, m.name)
      if arm not in arms:
        continue
      if m.knob:
        score = {l: float(np.nanmean(acc(l, tuning))) for l, r in results.items() if r.arm == arm}
        best = _common.best_of_sweep(results, arm, score)
        label, point, edges = best.label, best.point, best.edges
      else:
        label, point, edges = arm, {}, ()
      picks[(setting, m.name)] = Pick(setting, m, label, point, edges, acc(label, held))
  return picks, tuning, held


def _point_text(pick: Pick) -> str:
  return ", ".join(f"{'η' if k == 'learning_rate' else 'λ'}={v:g}" for k, v in pick.point.items()) or "—"


def predicted_angle(result, method: Method) -> np.ndarray | None:
  """The equilibrium angle per seed and logged step of a tuned result from its logged η_t and λ_t (None: no
  closed form for the method)."""
  if method.predict is None or "lr" not in result.series:
    return None
  lr = result.series["lr"]
  # The step logs η_t and the gated λ_t of ``weight_decay``; a decoupled rate of the mixed Adam program is the
  # swept value times the same gate (λ_t / λ where λ > 0, else 1: the zoo's decay acts throughout).
  wd = result.series.get("weight_decay", np.zeros_like(lr))
  if method.knob not in ("weight_decay", "learning_rate"):
    wd = np.full_like(lr, result.swept.get(method.knob, 0.0))
  if method.predict == "adamh":
    return np.arctan(lr)   # a relative step η along the direction: at most arctan(η) per step
  if method.predict == "sgd":
    return np.asarray(diagnostics.equilibrium_angular_update(lr, wd, MOMENTUM))
  shrink = {"adamw": lr * wd, "adamp": lr * wd * WD_RATIO}[method.predict]
  return np.asarray(diagnostics.equilibrium_angular_update(1.0, shrink, B1, optimizer="adamw"))


_HIDDEN_ANGLE = re.compile(r"^angle/layers/\d+/kernel$")


def measured_angle(result) -> np.ndarray | None:
  """The angular update of the hidden kernels per seed and logged step (mean over layers)."""
  keys = sorted(k for k in result.series if _HIDDEN_ANGLE.match(k))
  return np.nanmean(np.stack([result.series[k] for k in keys]), axis=0) if keys else None


def angle_pair(result, method: Method) -> tuple[float, float]:
  """(measured, predicted) angle, each the mean over seeds and the second half of the logged steps."""
  measured, predicted = measured_angle(result), predicted_angle(result, method)
  if measured is None:
    return math.nan, math.nan
  late = result.steps >= result.steps[-1] / 2
  m = float(np.nanmean(measured[:, late]))
  p = float(np.nanmean(predicted[:, late])) if predicted is not None else math.nan
  return m, p


def _ranking(picks: dict, setting: str, results, quantum: float) -> tuple[str, list[str]]:
  """The ranked table of one setting and the sentences saying which neighbouring ranks are resolved."""
  rows = sorted((p for (s, _), p in picks.items() if s == setting), key=lambda p: -np.nanmean(p.heldout))
  lines = [f"**{SETTING_TEXT[setting]}** (`{setting}`), held-out seeds, ranked by mean test accuracy:", "",
           "| rank | method | tuned knob | test acc % (95% CI) | gap to next, pt (95% CI) | measured / predicted "
           "angle |", "|---|---|---|---|---|---|"]
  resolved, unresolved = [], []
  for i, p in enumerate(rows):
    ci = report.mean_ci(p.heldout)
    gap = "—"
    if i + 1 < len(rows):
      g = report.paired_ci(p.heldout, rows[i + 1].heldout)
      gap = f"{g.mean:+.2f} [{g.low:+.2f}, {g.high:+.2f}]"
      (resolved if g.low > 0 else unresolved).append(f"{p.method.name} > {rows[i + 1].method.name}")
    m, q = angle_pair(results[p.label], p.method)
    ratio = f"{m:.3g} / {q:.3g}" if np.isfinite(q) else (f"{m:.3g} / —" if np.isfinite(m) else "—")
    edge = " (grid edge)" if p.edges else ""
    lines.append(f"| {i + 1} | {p.method.title} (`{p.method.name}`) | {_point_text(p)}{edge} | "
                 f"{ci.mean:.2f} [{ci.low:.2f}, {ci.high:.2f}] | {gap} | {ratio} |")
  sentence = (f"In the {SETTING_TEXT[setting]}, "
              + (f"the ranking is resolved (paired interval above 0) between {', '.join(resolved)}" if resolved
                 else "no neighbouring pair of ranks is resolved")
              + (f"; not resolved between {', '.join(unresolved)}" if unresolved and resolved else "")
              + f" (one test example in one seed is {quantum:.2g} pt).")
  return "\n".join(lines), [sentence]


def analyze(results, config):
  picks, tuning, held = _picks(results, config)
  quantum = 100.0 / ((config.data.n_test or 1000) * max(1, len(held)))
  claims = []
  for (setting, name), p in picks.items():
    for ref in REFERENCES:
      # Each reference against the other once (AdamW-lr > SGD+L2), every other method against both.
      if name == ref or (setting, ref) not in picks or (name in REFERENCES and
                                                        REFERENCES.index(name) > REFERENCES.index(ref)):
        continue
      r = picks[(setting, ref)]
      claims.append(report.directional_claim(
          f"{setting}.{name}>{ref}", f"{p.method.title} beats {r.method.title} ({SETTING_TEXT[setting]}).",
          f"held-out acc: {p.method.name} ({_point_text(p)}) − {ref} ({_point_text(r)})",
          report.paired_ci(p.heldout, r.heldout), min_effect=0.0, delta=MIN_GAIN, unit=" pt", quantum=quantum,
          edges=p.edges + r.edges, compared=_common.health(results, config, p.label, r.label, seeds=held)))
  parts = [f"Knobs tuned on seeds {tuning}, scored on held-out seeds {held}. Angles: the hidden kernels' "
           "angular update per step, mean over the second half of training, against the equilibrium prediction "
           "(see decay_zoo_angles.png; — where the method has no closed form)."]
  sentences = []
  for setting in SETTINGS:
    if any(s == setting for s, _ in picks):
      table, said = _ranking(picks, setting, results, quantum)
      parts.append(table)
      sentences += said
  parts.append(" ".join(sentences))
  return claims, "\n\n".join(parts)


def plots(results, config, outdir: str) -> list[str]:
  """Measured against predicted equilibrium angular update of each tuned method, one panel per setting."""
  from experiments.train import plots as plots_lib
  picks, _, _ = _picks(results, config)
  pairs = {key: angle_pair(results[p.label], p.method) for key, p in picks.items()}
  drawn = {key for key, (m, q) in pairs.items() if np.isfinite(m) and np.isfinite(q) and m > 0 and q > 0}
  if not drawn:   # no logged angles or rates (e.g. results without the step diagnostics): nothing to compare
    return []
  styles = plots_lib.StyleMap.from_config(config)
  plt = plots_lib._pyplot()  # pylint: disable=protected-access
  settings = [s for s in SETTINGS if any(k[0] == s for k in drawn)]
  fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings) + 2.6, 4.0), squeeze=False,
                           layout="constrained")
  for ax, setting in zip(axes[0], settings):
    points = []
    for key, p in picks.items():
      if key[0] != setting or key not in drawn:
        continue
      m, q = pairs[key]
      style = styles.result(results[p.label])
      line, = ax.plot([q], [m], markersize=8, label=f"{p.method.name} ({_point_text(p)})",
                      **{**style.kwargs(), "linestyle": "none"})
      line.set_gid(p.label)
      points += [m, q]
    lo, hi = min(points) / 2, max(points) * 2
    ax.plot([lo, hi], [lo, hi], color="black", linestyle=(0, (4, 2)), linewidth=1.0, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plots_lib.legend_outside(ax)
    ax.set_title(SETTING_TEXT[setting], fontsize=9)
    ax.set_xlabel("predicted equilibrium angle (rad / step)")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("measured angular update, hidden kernels")
  fig.suptitle("decay_zoo: angular update vs equilibrium prediction (tuned knob; mean over held-out and tuning "
               "seeds, second half of training)", fontsize=9)
  return [plots_lib.save_figure(fig, os.path.join(outdir, "decay_zoo_angles.png"))]


def setting(config) -> str:
  arms = {a.name: a for a in config.arms}
  grids = []
  for m in METHODS:
    a = arms.get(arm_name("bn", m.name))
    if a and a.sweep:
      grids.append(f"{m.name}: {m.knob} ∈ {{{', '.join(f'{v:g}' for v in a.sweep[m.knob])}}}")
  n = config.seeds
  k = tuning_seed_count(n)
  return (
      f"MNIST-1D with {100 * config.data.label_noise:g}% label noise, MLP {config.model.kwargs.get('hidden')} with "
      "BatchNorm without affine parameters (`bn`) and without normalisation (`plain`), "
      f"{config.train.steps} steps, cosine learning rate; Adam-type η = {ADAM_LR:g} (β₁ = {B1:g}), SGD-type "
      f"η = {SGD_LR:g} (momentum {MOMENTUM:g}); decay on the kernels only. Each method's knob is a grid of "
      f"{GRID_FACTOR:g}× steps centred at a decay timescale τ = {TAU_FRACTION:g}·T (module docstring): "
      + "; ".join(grids) + f". FixNorm holds the classifier kernel at c = {CLASSIFIER_NORM:g}; AdamP's "
      f"wd_ratio is {WD_RATIO:g}. The knob is picked on the first {k} of the {n} seeds and scored on the other "
      f"{n - k}; a pick on its grid's edge makes its claims inconclusive. Claims: each method against "
      f"AdamW-lr and against SGD+L2 in each setting (directional, δ = {MIN_GAIN:g} pt).")


STUDY = Study(
    name="decay_zoo",
    title="decay_zoo — the weight-decay methods side by side, each tuned on equal terms",
    setting=setting,
    make_config=make_config,
    analyze=analyze,
    plots=plots,
    optimizers=("sgd", "adam", "adamp", "adams", "rotational_adamw", "adamh", "fixnorm"),
)
