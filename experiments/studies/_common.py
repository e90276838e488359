"""Pieces shared by the studies: the small BatchNorm setting, per-arm tables, paired effects, and what a claim
needs to know about the arms it compared (:func:`health` for the *invalid* check, :func:`best_of_sweep` for
the grid-edge check of ``experiments.report``)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from experiments import config as config_lib
from experiments import optimizers
from experiments import report
from experiments.train.metrics import ArmResult


def bn_mlp_config(name: str, quick: bool) -> config_lib.ExperimentConfig:
  """MNIST-1D with noisy labels and an MLP whose hidden layers feed BatchNorm without affine parameters.

  Every hidden kernel is then exactly scale-invariant (Zhang et al. 2019 run BN without learnable scale and
  shift too), so weight decay acts on them only through the effective learning rate η/‖w‖², which is the
  mechanism the SGD claims are about. 20% label noise on 4000 examples makes the task hard enough that the
  network memorises noise late in training, so how the effective step evolves changes test accuracy. The
  learning rate follows a cosine to zero: with a constant rate the decayed runs end with a large effective
  step and noisy weights (in a trial run, train accuracy 57% vs 93% without decay and no test gain), while
  the annealed runs settle, and decay's larger effective step earlier in training then shows as a gain.
  """
  return config_lib.ExperimentConfig(
      name=name,
      data=config_lib.DataConfig(name="mnist1d", n_train=4000, n_test=1000, label_noise=0.2, seed=0),
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine",
                                   kwargs={"hidden": [256, 256]} if not quick else {"hidden": [128, 128]}),
      optim=optimizers.SGD(learning_rate=0.1, lr_schedule="cosine", momentum=0.9, weight_decay=5e-3, decay="l2",
                           decay_mask="all"),
      train=config_lib.TrainConfig(steps=1200 if quick else 6000, batch_size=128, log_every=50 if quick else 100,
                                   eval_every=100 if quick else 500, checkpoint_every=0),
      seeds=6 if quick else 10,
      arms=[config_lib.Arm("base")])


def pct(values: np.ndarray) -> np.ndarray:
  return 100.0 * np.asarray(values, np.float64)


def final_accuracy(results: dict[str, ArmResult], label: str) -> np.ndarray:
  """Final test accuracy (percent) of ``label`` per seed."""
  return pct(results[label].final("test_accuracy"))


def aligned(results: dict[str, ArmResult], *labels: str, metric: str = "test_accuracy",
            transform=pct) -> list[np.ndarray]:
  """Per-seed final values of ``metric`` for ``labels``, restricted to the seeds they all have (paired)."""
  common = sorted(set.intersection(*(set(results[l].seeds) for l in labels)))
  out = []
  for label in labels:
    r = results[label]
    index = [r.seeds.index(s) for s in common]
    out.append(transform(r.final(metric)[index]))
  return out


def arm_table(results: dict[str, ArmResult], labels: list[str] | None = None,
              extra: dict[str, str] | None = None) -> str:
  """Markdown table: final test accuracy (mean and 95% CI over seeds), train accuracy, norms."""
  extra = extra or {"norm/scale_invariant": "final ‖w_si‖"}
  labels = labels or list(results)
  header = "| arm | seeds | test accuracy % (95% CI) | final train acc % | " + " | ".join(extra.values()) + " |"
  lines = [header, "|" + "---|" * (4 + len(extra))]
  for label in labels:
    r = results[label]
    test = report.mean_ci(pct(r.final("test_accuracy")))
    train = np.nanmean(pct(r.final("train_accuracy")))
    cells = []
    for key in extra:
      cells.append(f"{np.nanmean(r.final(key)):.4g}" if key in r.series else "—")
    lines.append(f"| {label} | {len(r.seeds)} | {test.mean:.2f} [{test.low:.2f}, {test.high:.2f}] | {train:.1f} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def ident(values: np.ndarray) -> np.ndarray:
  return np.asarray(values, np.float64)


# Classes of the bundled datasets (the analysis reads metrics.jsonl only, never the data).
NUM_CLASSES = {"mnist1d": 10, "digits": 10, "cifar10": 10, "cifar100": 100, "mod_add": 97, "mod_sub": 97}


def num_classes(config: config_lib.ExperimentConfig) -> int:
  if config.data.name not in NUM_CLASSES:
    raise ValueError(f"data.name {config.data.name!r} has no class count for the chance-accuracy check; "
                     f"known: {sorted(NUM_CLASSES)}.")
  return NUM_CLASSES[config.data.name]


def member_status(result: ArmResult, classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Per seed of ``result``: (diverged, at chance) as boolean arrays; a diverged member is not also at chance.

  Diverged: ``diverged_at`` was logged (``train.on_nan=continue``) or the last logged train loss is not finite.
  At chance: the final test accuracy is within ``report.CHANCE_MARGIN / classes`` of ``1 / classes`` (what a
  run predicting one class scores on a balanced test set), or there is no finite final test accuracy.
  """
  n = len(result.seeds)
  diverged = np.zeros(n, bool)
  if "diverged_at" in result.series:
    diverged |= np.isfinite(result.series["diverged_at"]).any(axis=1)
  if "train_loss" in result.series and result.series["train_loss"].shape[1]:
    # The train loss is logged at every logged step (a non-finite one is written as null, read back as NaN).
    loss = result.series["train_loss"]
    diverged |= ~np.isfinite(loss[:, -1]) & np.isfinite(loss).any(axis=1)
  acc = result.final("test_accuracy") if "test_accuracy" in result.series else np.full(n, np.nan)
  chance = ~np.isfinite(acc) | (np.abs(acc - 1.0 / classes) <= report.CHANCE_MARGIN / classes)
  return diverged, chance & ~diverged


def health(results: dict[str, ArmResult], config: config_lib.ExperimentConfig, *groups,
           seeds: Sequence | None = None) -> tuple[report.ArmHealth, ...]:
  """One :class:`experiments.report.ArmHealth` per compared arm, for a claim's ``compared``.

  Args:
    results: the study's results.
    config: its config (for the number of classes).
    *groups: one per side of the comparison: a label, or a ``(name, labels)`` pair for a side made of
      several labels (e.g. a whole λ sweep).
    seeds: the seeds the claim used (default: the seeds every compared label has, as in :func:`aligned`).
  """
  classes = num_classes(config)
  named = [(g, [g]) if isinstance(g, str) else (g[0], list(g[1])) for g in groups]
  if seeds is None:
    labels = [l for _, ls in named for l in ls]
    seeds = sorted(set.intersection(*(set(results[l].seeds) for l in labels))) if labels else []
  out = []
  for name, labels in named:
    members = diverged = chance = 0
    for label in labels:
      r = results[label]
      index = [r.seeds.index(s) for s in seeds if s in r.seeds]
      d, c = member_status(r, classes)
      members += len(index)
      diverged += int(d[index].sum())
      chance += int(c[index].sum())
    out.append(report.ArmHealth(name, members, diverged, chance))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class Best:
  """The best point of an arm's sweep, picked on the mean over seeds of a score (one pick per arm).

  Attributes:
    arm: the arm.
    label: the picked label.
    point: the picked swept values, e.g. ``{"weight_decay": 10.0}``.
    grid: the swept grid, parameter -> sorted values.
    edges: the picked coordinates on an end of their grid (``report.grid_edges``): pass to a claim's ``edges``.
  """
  arm: str
  label: str
  point: dict
  grid: dict
  edges: tuple


def best_of_sweep(results: dict[str, ArmResult], arm: str, score: dict[str, float]) -> Best:
  """The label of ``arm`` with the largest ``score[label]`` (NaN scores lose), with its grid-edge check.

  Args:
    results: the study's results; the arm's labels are those whose ``ArmResult.arm`` is ``arm``.
    arm: the swept arm.
    score: label -> the number the pick maximises (e.g. mean test accuracy over the tuning seeds).


  The grid is read back from the swept values of the arm's labels, so ``--set`` overrides are checked as run.
  """
  # Sorted by the swept values, so a tie goes to the smallest point (as np.nanargmax over a sorted grid).
  labels = sorted((l for l, r in results.items() if r.arm == arm),
                  key=lambda l: tuple(float(v) for _, v in sorted(results[l].swept.items())))
  if not labels:
    raise KeyError(f"no results for arm {arm!r}; arms: {sorted({r.arm for r in results.values()})}.")
  finite = [l for l in labels if np.isfinite(score[l])] or labels
  label = max(finite, key=lambda l: score[l])
  grid = {}
  for l in labels:
    for k, v in results[l].swept.items():
      grid.setdefault(k, set()).add(float(v))
  grid = {k: sorted(v) for k, v in grid.items()}
  point = {k: float(v) for k, v in results[label].swept.items()}
  return Best(arm, label, point, grid, tuple(report.grid_edges(arm, point, grid)))


__all__ = ["bn_mlp_config", "final_accuracy", "aligned", "arm_table", "pct", "ident", "health", "member_status",
           "num_classes", "best_of_sweep", "Best", "NUM_CLASSES"]
