"""``transformer``: decoupled decay on a transformer, in the grokking setting (Bjorck et al. 2021's NLP claim).

Bjorck et al. test decoupled decay "in NLP and RL where adaptive optimizers are the norm"; this study puts their
claims on the smallest NLP-like setting a CPU affords: a pre-LayerNorm decoder (``experiments.models.Transformer``,
one block) reading ``[a, +, b, =]`` and predicting ``a + b mod 97`` (``experiments.data`` ``mod_add``; Power et
al. 2022's grokking task, where decay decides whether and when the network generalises beyond its train set).

Arms (Adam, decay on every weight matrix: the dense kernels and both embeddings), the swept ones over λ on a
three-point grid of two decades (:data:`L2_GRID`, :data:`DECOUPLED_GRID`), one vmapped program per optimizer
structure:

* ``none``        — Adam without decay;
* ``adam_l2``     — Adam on ∇L + λw;
* ``adamw``       — decoupled, lr-coupled decay: w ← w − η(u + λw);
* ``adamw_early`` — the same, during the first :data:`EARLY_END` of the steps only;
* ``l2_0_1_1`` / ``l2_1_0_0`` — the buffer variants of ``adam_buffers`` (L2 out of the first moment; L2 in the
  first moment only).

Claims:

* N1 — decay decides generalisation: best-λ AdamW beats no decay (final test accuracy).
* N2 — AdamW beats Adam+L2 (best λ each, final test accuracy).
* N3 — AdamW reaches :data:`TARGET` test accuracy in fewer steps than Adam+L2.
* N4 — decay during the first :data:`EARLY_END` of the steps only lands close to decay throughout (B1 on NLP).
* N5 — L2 in Adam's first moment is the harm (B5 on this model): (0,1,1) ≈ AdamW, (1,0,0) ≈ Adam+L2, and
  (0,1,1) beats Adam+L2.
"""

from __future__ import annotations

import os

import numpy as np

from experiments import config as config_lib
from experiments import optimizers
from experiments import report
from experiments.studies import Study
from experiments.studies import _common
from experiments.studies import adam_buffers

L2_GRID = [1e-3, 1e-2, 1e-1]
DECOUPLED_GRID = [0.1, 1.0, 10.0]
EARLY_END = 0.5   # adamw_early decays during steps [0, EARLY_END · steps)
TARGET = 0.95     # the test accuracy whose first crossing is "generalised"
MIN_GAIN = 1.0    # points of final test accuracy
MARGIN = 1.5      # equivalence margin, points
MIN_SPEEDUP = 0.1  # N3: fraction of train.steps by which AdamW must be faster

# Each arm's optimizer overrides and its λ grid (None: not swept).
ARMS = {
    "none": ({"name": "adam", "decay": "decoupled", "weight_decay": 0.0}, None),
    "adam_l2": ({"name": "adam", "decay": "l2"}, L2_GRID),
    "adamw": ({"name": "adam", "decay": "decoupled"}, DECOUPLED_GRID),
    "adamw_early": ({"name": "adam", "decay": "decoupled", "decay_end": EARLY_END}, DECOUPLED_GRID),
    "l2_0_1_1": (adam_buffers.ARMS["l2_0_1_1"][0], L2_GRID),
    "l2_1_0_0": (adam_buffers.ARMS["l2_1_0_0"][0], L2_GRID),
}
QUICK_SKIPS = ("l2_1_0_0",)
# Every weight matrix: the dense kernels and the token / position embeddings (not LayerNorm, not biases).
DECAY_MASK = {"include": ["kernel$", "embedding$"]}


def make_config(quick: bool) -> config_lib.ExperimentConfig:
  # Quick: half the pairs train, where a single-seed probe (width 64, η = 3e-3, batch 512) reached 94% test
  # accuracy by step 200 with λ = 1 and by step 400 without decay; full: Power et al.'s / Nanda et al.'s 30%.
  data = config_lib.DataConfig(name="mod_add", n_train=4704 if quick else 2823, seed=0)
  model_kwargs = {"vocab_size": 99, "seq_len": 4, "dim": 64 if quick else 128, "heads": 4, "depth": 1}
  config = config_lib.ExperimentConfig(
      name="transformer", data=data,
      model=config_lib.ModelConfig(name="transformer", norm="layer", kwargs=model_kwargs),
      # Power et al.: AdamW, η = 1e-3, β2 = 0.98, 10 warm-up steps, λ = 1; the quick form takes a 3x larger η.
      optim=optimizers.Adam(learning_rate=3e-3 if quick else 1e-3, lr_schedule="constant", warmup_steps=10,
                            b1=0.9, b2=0.98, eps=1e-8, decay="decoupled", decay_mask=DECAY_MASK),
      train=config_lib.TrainConfig(steps=400 if quick else 20_000, batch_size=512, log_every=25 if quick else 100,
                                   eval_every=50 if quick else 500, checkpoint_every=0, on_nan="continue"),
      seeds=3 if quick else 8)
  # The quick form leaves out (1,0,0): one more compiled program for the least central claim (N5b).
  config.arms = [config_lib.Arm(name, dict(optim), {"weight_decay": list(grid)} if grid else {})
                 for name, (optim, grid) in ARMS.items() if not (quick and name in QUICK_SKIPS)]
  return config


def steps_to_target(result, total_steps: int, target: float = TARGET) -> np.ndarray:
  """Per seed, the first evaluated step at which test accuracy reached ``target``; ``total_steps`` if never.

  A run that never gets there is counted at the budget, so a difference in steps is a lower bound on the true
  difference when the slower arm is censored.
  """
  acc = result.series["test_accuracy"]
  out = np.full(acc.shape[0], float(total_steps))
  for i, row in enumerate(acc):
    hit = np.flatnonzero(np.isfinite(row) & (row >= target))
    if hit.size:
      out[i] = float(result.steps[hit[0]])
  return out


def _labels(results, arm: str) -> list[str]:
  labels = [l for l, r in results.items() if r.arm == arm]
  return sorted(labels, key=lambda l: results[l].swept.get("weight_decay", 0.0))


def _common_seeds(results) -> list:
  return sorted(set.intersection(*(set(r.seeds) for r in results.values())))


def _per_seed(results, label: str, values: np.ndarray, seeds: list) -> np.ndarray:
  r = results[label]
  return np.asarray(values, float)[[r.seeds.index(s) for s in seeds]]


def present(results) -> list[str]:
  """The arms of :data:`ARMS` that ran (the quick form leaves out ``l2_1_0_0``), in that order."""
  ran = {r.arm for r in results.values()}
  return [arm for arm in ARMS if arm in ran]


def picks(results, config) -> dict:
  """Per arm, its best λ (``_common.Best``, with the grid-edge check), or ``None`` for an unswept arm.

  The score is the mean final test accuracy in points minus the mean steps to :data:`TARGET` as a fraction of the
  run (at most one point): where several λ reach 100%, the one that generalises soonest wins.
  """
  out = {}
  for arm in present(results):
    labels = _labels(results, arm)
    if not any(results[l].swept for l in labels):
      out[arm] = None
      continue
    score = {}
    for l in labels:
      acc = _common.final_accuracy(results, l)
      steps = steps_to_target(results[l], config.train.steps)
      score[l] = float(np.nanmean(acc) - np.mean(steps) / config.train.steps) if np.isfinite(acc).any() else np.nan
    out[arm] = _common.best_of_sweep(results, arm, score)
  return out


def _label(results, best, arm: str) -> str:
  return best[arm].label if best[arm] is not None else _labels(results, arm)[0]


def analyze(results, config):
  best = picks(results, config)
  arms = present(results)
  label = {arm: _label(results, best, arm) for arm in arms}
  seeds = _common_seeds({a: results[label[a]] for a in arms})
  acc = {a: _per_seed(results, label[a], _common.final_accuracy(results, label[a]), seeds) for a in arms}
  steps = {a: _per_seed(results, label[a], steps_to_target(results[label[a]], config.train.steps), seeds)
           for a in arms}
  lam = {a: (best[a].point.get("weight_decay", 0.0) if best[a] else 0.0) for a in arms}
  compared = lambda *arms: _common.health(results, config, *(label[a] for a in arms), seeds=seeds)
  edges = lambda *arms: [e for a in arms if best[a] is not None for e in best[a].edges]
  pick_note = lambda *arms: "best λ: " + ", ".join(f"{a} {lam[a]:g}" for a in arms) + "."
  total = config.train.steps
  claims = [
      report.directional_claim(
          "N1", "Decay decides generalisation: AdamW beats Adam without decay.",
          "best-λ acc(adamw) − acc(none)", report.paired_ci(acc["adamw"], acc["none"]), min_effect=MIN_GAIN,
          unit=" pt", compared=compared("adamw", "none"), edges=edges("adamw"), notes=pick_note("adamw")),
      report.directional_claim(
          "N2", "AdamW beats Adam+L2 (each at its best λ).", "best-λ acc(adamw) − best-λ acc(adam_l2)",
          report.paired_ci(acc["adamw"], acc["adam_l2"]), min_effect=MIN_GAIN, unit=" pt",
          compared=compared("adamw", "adam_l2"), edges=edges("adamw", "adam_l2"),
          notes=pick_note("adamw", "adam_l2")),
      report.directional_claim(
          "N3", f"AdamW reaches {100 * TARGET:g}% test accuracy in fewer steps than Adam+L2.",
          f"steps to {100 * TARGET:g}%: adam_l2 − adamw (a run that never gets there counts as {total})",
          report.paired_ci(steps["adam_l2"], steps["adamw"]), min_effect=MIN_SPEEDUP * total, unit=" steps",
          compared=compared("adam_l2", "adamw"), edges=edges("adamw", "adam_l2"),
          notes=(pick_note("adamw", "adam_l2") + f" Runs that reached {100 * TARGET:g}%: "
                 + ", ".join(f"{a} {int(np.sum(steps[a] < total))}/{len(seeds)}" for a in ("adamw", "adam_l2"))
                 + ".")),
      report.equivalence_claim(
          "N4", f"Decay during the first {100 * EARLY_END:g}% of steps only lands close to decay throughout.",
          "best-λ acc(adamw_early) − best-λ acc(adamw)", report.paired_ci(acc["adamw_early"], acc["adamw"]),
          margin=MARGIN, unit=" pt", compared=compared("adamw_early", "adamw"),
          edges=edges("adamw_early", "adamw"), notes=pick_note("adamw_early", "adamw")),
      report.equivalence_claim(
          "N5a", "L2 kept out of the first moment, (0,1,1), behaves like AdamW.",
          "best-λ acc(l2_0_1_1) − best-λ acc(adamw)", report.paired_ci(acc["l2_0_1_1"], acc["adamw"]),
          margin=MARGIN, unit=" pt", compared=compared("l2_0_1_1", "adamw"), edges=edges("l2_0_1_1", "adamw"),
          notes=pick_note("l2_0_1_1", "adamw")),
      report.directional_claim(
          "N5c", "Taking L2 out of the first moment, (0,1,1), beats Adam+L2: the first moment is the harm.",
          "best-λ acc(l2_0_1_1) − best-λ acc(adam_l2)", report.paired_ci(acc["l2_0_1_1"], acc["adam_l2"]),
          min_effect=MIN_GAIN, unit=" pt", compared=compared("l2_0_1_1", "adam_l2"),
          edges=edges("l2_0_1_1", "adam_l2"), notes=pick_note("l2_0_1_1", "adam_l2")),
  ]
  if "l2_1_0_0" in arms:
    claims.append(report.equivalence_claim(
        "N5b", "L2 in the first moment only, (1,0,0), behaves like Adam+L2.",
        "best-λ acc(l2_1_0_0) − best-λ acc(adam_l2)", report.paired_ci(acc["l2_1_0_0"], acc["adam_l2"]),
        margin=MARGIN, unit=" pt", compared=compared("l2_1_0_0", "adam_l2"),
        edges=edges("l2_1_0_0", "adam_l2"), notes=pick_note("l2_1_0_0", "adam_l2")))
  return claims, _table(results, config, best, label)


def weight_matrices(result) -> list[str]:
  """The paths of the weight matrices whose norm the harness logged (``norm/<path>`` of every leaf with ndim ≥ 2)."""
  return sorted(k[len("norm/"):] for k in result.series if k.startswith("norm/") and k != "norm/scale_invariant")


def matrix_dynamics(result) -> dict[str, dict[str, np.ndarray]]:
  """Per weight matrix, the (seeds, points) series of ‖W‖, η/‖W‖ and the angular update of the logged step.

  η/‖W‖ is Adam's effective learning rate (``wd_optax.diagnostics.effective_learning_rate`` with
  ``optimizer="adam"``: Adam's step does not scale with the gradient, so the relative step is η/‖W‖), formed from
  the logged ``lr`` and ``norm/<path>``; the angle between W before and after the step is logged by the harness.
  """
  out = {}
  for path in weight_matrices(result):
    norm = result.series[f"norm/{path}"]
    lr = result.series.get("lr", np.full_like(norm, np.nan))
    out[path] = {"norm": norm, "eff_lr": lr / np.where(norm > 0, norm, np.nan),
                 "angle": result.series.get(f"angle/{path}", np.full_like(norm, np.nan))}
  return out


def _table(results, config, best, label) -> str:
  total = config.train.steps
  lines = [f"| arm | best λ | final test acc % (95% CI) | final train acc % | steps to {100 * TARGET:g}% "
           "(reached) | Σ‖W‖² final | mean η/‖W‖ final | mean angle final |", "|" + "---|" * 8]
  for arm in label:
    r = results[label[arm]]
    test = report.mean_ci(_common.final_accuracy(results, label[arm]))
    steps = steps_to_target(r, total)
    dyn = matrix_dynamics(r)
    final = lambda key: np.array([[np.nan if not np.isfinite(row).any() else row[np.isfinite(row)][-1]
                                   for row in d[key]] for d in dyn.values()])  # (matrices, seeds)
    sq = np.nansum(final("norm") ** 2, axis=0) if dyn else np.full(len(r.seeds), np.nan)
    lam = (f"{best[arm].point.get('weight_decay', 0.0):g}" + (" (grid edge)" if best[arm].edges else "")
           if best[arm] is not None else "—")
    lines.append(f"| {arm} | {lam} | {test.mean:.1f} [{test.low:.1f}, {test.high:.1f}] | "
                 f"{np.nanmean(_common.pct(r.final('train_accuracy'))):.1f} | {np.mean(steps):.0f} "
                 f"({int(np.sum(steps < total))}/{len(steps)}) | {np.nanmean(sq):.3g} | "
                 f"{np.nanmean(final('eff_lr')) if dyn else np.nan:.3g} | "
                 f"{np.nanmean(final('angle')) if dyn else np.nan:.3g} |")
  per_lam = ["| arm | " + " | ".join(f"λ{i + 1}" for i in range(3)) + " |", "|---|---|---|---|"]
  for arm in label:
    if best[arm] is None:
      continue
    cells = [f"{results[l].swept.get('weight_decay', 0.0):g}: {np.nanmean(_common.final_accuracy(results, l)):.1f}"
             for l in _labels(results, arm)]
    per_lam.append(f"| {arm} | " + " | ".join(cells) + " |")
  return ("Best λ of each arm (picked on mean final test accuracy, ties broken by speed):\n\n" + "\n".join(lines)
          + "\n\nFinal test accuracy (%, mean over seeds) per λ:\n\n" + "\n".join(per_lam))


def plots(results, config, outdir):
  from experiments.train import plots as plots_lib
  plt = plots_lib._pyplot()  # pylint: disable=protected-access
  best = picks(results, config)
  label = {arm: _label(results, best, arm) for arm in present(results)}
  styles = plots_lib.StyleMap.from_config(config)
  paths = []
  fig, ax = plt.subplots(figsize=(7, 4))
  for i, arm in enumerate(label):
    r = results[label[arm]]
    acc = r.series["test_accuracy"]
    keep = np.isfinite(acc).any(axis=0)
    plots_lib.draw_series(ax, r.steps[keep], 100 * acc[:, keep], styles.result(r), label=plots_lib.result_text(r),
                          gid=r.label, index=i)
  ax.set_xlabel("step")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{config.data.name}: test accuracy at each arm's best λ")
  plots_lib.legend_outside(ax)
  paths.append(plots_lib.save_figure(fig, os.path.join(outdir, "test_accuracy_best.png")))
  matrices = weight_matrices(results[label["adamw"]]) if "adamw" in label else []
  for key, ylabel in (("norm", "‖W‖"), ("eff_lr", "η/‖W‖"), ("angle", "angular update (rad)")):
    if not matrices:
      break
    fig, axes = plt.subplots(1, len(matrices), figsize=(2.6 * len(matrices), 3), squeeze=False, sharex=True)
    for ax, path in zip(axes[0], matrices):
      for i, arm in enumerate(label):
        r = results[label[arm]]
        series = matrix_dynamics(r).get(path, {}).get(key)
        if series is None:
          continue
        keep = np.isfinite(series).any(axis=0)
        plots_lib.draw_series(ax, r.steps[keep], series[:, keep], styles.result(r), label=plots_lib.result_text(r),
                              gid=r.label, index=i, band=False)
      ax.set_title(path.replace("blocks/0/", "").replace("/kernel", "").replace("/embedding", " emb"), fontsize=8)
      ax.set_yscale("log")
    axes[0][0].set_ylabel(ylabel)
    plots_lib.legend_outside(axes[0][-1])
    paths.append(plots_lib.save_figure(fig, os.path.join(outdir, f"matrix_{key}.png")))
  return paths


def setting(config) -> str:
  o, d, t, m = config.optim, config.data, config.train, config.model
  grids = {a.name: a.sweep.get("weight_decay", []) for a in config.arms}
  fmt = lambda grid: "{" + ", ".join(f"{v:g}" for v in grid) + "}"
  early = config.arm_optim(next(a for a in config.arms if a.name == "adamw_early"))
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  total = data_lib.check(d.name, n_train=d.n_train, n_test=d.n_test)
  return (
      f"A {m.kwargs.get('depth', 1)}-block pre-LayerNorm decoder (width {m.kwargs.get('dim', 128)}, "
      f"{m.kwargs.get('heads', 4)} heads, causal attention, token + position embeddings) reads `[a, op, b, =]` "
      f"and predicts the answer of `{d.name}` (mod 97) from the last position; {total[0]} of the 97² pairs "
      f"({100 * total[0] / 97 ** 2:.0f}%) train, {total[1]} test, split by data.seed. Adam (η = "
      f"{o.learning_rate:g}, {o.lr_schedule} after {o.warmup_steps} warm-up steps, β = ({o.b1:g}, {o.b2:g})), "
      f"batch {t.batch_size}, {t.steps} steps, {config.seeds} seeds paired across arms; decay on every weight "
      f"matrix (dense kernels and embeddings). Adam+L2 and the buffer variants sweep λ ∈ "
      f"{fmt(grids.get('adam_l2', []))}, AdamW (lr-coupled) and early AdamW (decay during the first "
      f"{100 * early.decay_end:g}% of steps) sweep λ ∈ {fmt(grids.get('adamw', []))}; each arm's λ is picked on "
      f"its mean final test accuracy (ties broken by speed), and a pick on a grid edge makes its claims "
      f"inconclusive. Test accuracy is evaluated every {t.eval_every} steps; 'steps to {100 * TARGET:g}%' is the "
      f"first evaluation at or above it, {t.steps} for a run that never gets there.")


STUDY = Study(
    name="transformer",
    title="transformer — decoupled decay on a small transformer, modular arithmetic (Bjorck et al.'s NLP claim)",
    setting=setting,
    make_config=make_config,
    analyze=analyze,
    plots=plots,
)
