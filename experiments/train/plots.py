"""Matplotlib PNGs of a run: metrics over time per arm (mean over seeds, band = min..max over seeds)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from experiments.train.metrics import ArmResult


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_metric(results: dict[str, ArmResult], metric: str, path: str, *, title: str = "", ylabel: str = "",
                labels: Sequence[str] | None = None, logy: bool = False) -> str | None:
  """One line per label: ``metric`` over steps, mean over seeds with a min–max band. None if not logged."""
  labels = [l for l in (labels or list(results)) if metric in results[l].series]
  if not labels:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for label in labels:
    r = results[label]
    values = r.series[metric]
    keep = np.isfinite(values).any(axis=0)
    if not keep.any():
      continue
    steps, values = r.steps[keep], values[:, keep]
    mean = np.nanmean(values, axis=0)
    line, = ax.plot(steps, mean, label=label)
    if values.shape[0] > 1:
      ax.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), alpha=0.15,
                      color=line.get_color())
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel or metric)
  ax.set_title(title or metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_sweep(points: dict[str, tuple[np.ndarray, np.ndarray]], path: str, *, xlabel: str, ylabel: str,
               title: str = "") -> str:
  """Final metric against a swept value, one line per arm: ``points[arm] = (x, (seeds, len(x)) values)``."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for arm, (x, values) in points.items():
    mean = np.nanmean(values, axis=0)
    line, = ax.plot(x, mean, marker="o", label=arm)
    ax.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0), alpha=0.15, color=line.get_color())
  ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def standard_plots(results: dict[str, ArmResult], outdir: str, labels: Sequence[str] | None = None) -> list[str]:
  """Test accuracy, training loss and the norm of the scale-invariant weights over time."""
  made = [
      plot_metric(results, "test_accuracy", os.path.join(outdir, "accuracy.png"), title="test accuracy",
                  labels=labels),
      plot_metric(results, "train_loss", os.path.join(outdir, "train_loss.png"), title="training loss",
                  labels=labels, logy=True),
      plot_metric(results, "norm/scale_invariant", os.path.join(outdir, "norms.png"),
                  title="norm of the scale-invariant weights", ylabel="‖w‖", labels=labels),
      plot_metric(results, "angle/scale_invariant", os.path.join(outdir, "angular_update.png"),
                  title="angular update of the scale-invariant weights", ylabel="radians / step",
                  labels=labels, logy=True),
  ]
  return [p for p in made if p]
