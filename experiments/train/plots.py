"""Matplotlib figures of a run: metrics over time per arm (mean over seeds, band = min..max over seeds), each
saved as PNG and, for papers, as SVG beside it (:func:`save_figure`, the one place figures are written).

Every figure of a study draws an arm with the same colour, line style and marker: :class:`StyleMap` assigns
them once from the config's arm list (:meth:`StyleMap.from_config`), and every plot function here and in
``experiments/studies/*.py`` takes its styles from it. The swept points of one arm (e.g. the learning rates
of ``fixnorm_c1p5``) keep the arm's hue: lighter or darker by the first swept value, another dash pattern by
the second. A figure with more than :data:`MAX_LINES` lines is split into panels (one per swept arm; arms
without a sweep grouped by the name before their first ``_``), panels share their axes, and every legend
sits outside the data, to the right of (or below) its axes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from experiments.train.metrics import ArmResult

MAX_LINES = 8   # more lines than this in one axes: split the figure into panels
# matplotlib's tab10 and the five dark hues of tab20b, without relying on the active style's cycle.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")
# Short names of swept fields in legends.
SYMBOLS = {"learning_rate": "η", "weight_decay": "λ", "classifier_norm": "c", "momentum": "μ"}
NEUTRALS = ("#222222", "#666666", "#999999", "#bbbbbb")   # lines that are not arms (e.g. one per η across arms)
BAND_NOTE = "mean over seeds; band = min–max over seeds"


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


# --- styles ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Style:
  """How one arm (or one swept point of an arm) is drawn."""
  color: str
  linestyle: Any
  marker: str
  filled: bool = True

  def kwargs(self) -> dict:
    """Keyword arguments for ``Axes.plot``."""
    return dict(color=self.color, linestyle=self.linestyle, marker=self.marker,
                markerfacecolor=self.color if self.filled else "none", markeredgecolor=self.color,
                markeredgewidth=1.2)


def _shade(color: str, amount: float) -> str:
  """``color`` mixed with black (``amount < 0``) or white (``amount > 0``) by ``|amount|``."""
  from matplotlib import colors as mcolors
  rgb = np.array(mcolors.to_rgb(color))
  target = np.ones(3) if amount > 0 else np.zeros(3)
  return mcolors.to_hex(rgb + abs(amount) * (target - rgb))


def _values_key(value) -> Any:
  return float(value) if isinstance(value, (int, float, np.floating, np.integer)) else str(value)


class StyleMap:
  """One :class:`Style` per arm, by the arm's position in the config's arm list.

  Arm ``i`` gets colour ``COLORS[i % 15]``, line style ``LINESTYLES[(i + 2·(i // 15)) % 4]`` and marker
  ``MARKERS[i % 9]`` (hollow for odd ``i``), so the (colour, line style) pairs stay distinct up to 60 arms and
  two neighbouring arms never share a dash pattern. Members of a swept arm (:meth:`member`) keep the arm's hue.

  Args:
    arms: arm names in config order.
    sweeps: ``{arm: {field: [values]}}``, the swept values of each arm (for :meth:`member`).
  """

  def __init__(self, arms: Sequence[str], sweeps: Mapping[str, Mapping[str, Sequence]] | None = None):
    self.arms = list(dict.fromkeys(arms))
    self.sweeps = {arm: {k: sorted({_values_key(v) for v in vs}, key=lambda x: (isinstance(x, str), x))
                         for k, vs in sweep.items()}
                   for arm, sweep in (sweeps or {}).items()}
    self._index = {arm: i for i, arm in enumerate(self.arms)}

  @classmethod
  def from_config(cls, config) -> "StyleMap":
    """The styles of ``config.arms`` (an :class:`experiments.config.ExperimentConfig`)."""
    return cls([a.name for a in config.arms], {a.name: dict(a.sweep) for a in config.arms if a.sweep})

  @classmethod
  def from_results(cls, results: Mapping[str, ArmResult]) -> "StyleMap":
    """The styles of the arms in ``results``, in order of appearance (when no config is at hand)."""
    arms, sweeps = [], {}
    for r in results.values():
      arms.append(r.arm)
      for k, v in r.swept.items():
        sweeps.setdefault(r.arm, {}).setdefault(k, []).append(v)
    return cls(arms, sweeps)

  def arm(self, arm: str) -> Style:
    """The style of ``arm``."""
    if arm not in self._index:
      raise KeyError(f"arm {arm!r} is not in this style map; its arms: {', '.join(self.arms)}.")
    i = self._index[arm]
    return Style(COLORS[i % len(COLORS)], LINESTYLES[(i + 2 * (i // len(COLORS))) % len(LINESTYLES)],
                 MARKERS[i % len(MARKERS)], filled=i % 2 == 0)

  def member(self, arm: str, swept: Mapping[str, Any] | None = None) -> Style:
    """The style of one swept point of ``arm``: the arm's hue, lighter or darker by the first swept field's
    value (sorted), the dash pattern and marker shifted by the second's."""
    base = self.arm(arm)
    if not swept:
      return base
    fields = [k for k in self.sweeps.get(arm, {}) if k in swept] or sorted(swept)
    positions = []
    for k in fields[:2]:
      values = self.sweeps.get(arm, {}).get(k) or [_values_key(swept[k])]
      value = _values_key(swept[k])
      positions.append((values.index(value) if value in values else 0, len(values)))
    j, n = positions[0]
    k = positions[1][0] if len(positions) > 1 else 0
    color = base.color if n == 1 else _shade(base.color, -0.45 + 0.95 * j / (n - 1))
    linestyle = LINESTYLES[(LINESTYLES.index(base.linestyle) + k) % len(LINESTYLES)]
    marker = MARKERS[(self._index[arm] + (k if len(positions) > 1 else j)) % len(MARKERS)]
    return Style(color, linestyle, marker, filled=base.filled)

  def result(self, r: ArmResult) -> Style:
    """The style of one result (an arm, or one swept point of it)."""
    return self.member(r.arm, r.swept)


def swept_text(swept: Mapping[str, Any]) -> str:
  """``{"learning_rate": 0.2}`` -> ``"η=0.2"``."""
  return ", ".join(f"{SYMBOLS.get(k, k)}={v:g}" if isinstance(v, (int, float)) else f"{SYMBOLS.get(k, k)}={v}"
                   for k, v in swept.items())


def result_text(r: ArmResult) -> str:
  """The legend text of a result: the arm, then its swept values."""
  return f"{r.arm} {swept_text(r.swept)}" if r.swept else r.label


# --- drawing and saving ------------------------------------------------------------------------------------------

_KEPT: list | None = None


@contextlib.contextmanager
def keep_figures() -> Iterator[list]:
  """Inside the block, :func:`save_figure` writes the PNG and appends the figure to the yielded list instead of
  closing it (for tests that inspect the drawn artists)."""
  global _KEPT
  import matplotlib
  previous, _KEPT = _KEPT, []
  try:
    with matplotlib.rc_context({"figure.max_open_warning": 0}):
      yield _KEPT
  finally:
    kept, _KEPT = _KEPT, previous
    plt = _pyplot()
    for fig in kept:
      plt.close(fig)


def vector_path(path: str) -> str:
  """Where :func:`save_figure` puts the SVG of the PNG at ``path``: beside it, ``.svg`` for ``.png``."""
  return os.path.splitext(path)[0] + ".svg"


def save_figure(fig, path: str) -> str:
  """Writes ``fig`` to ``path`` (PNG, legends outside the axes included) and beside it as SVG (for papers:
  :func:`vector_path`), then closes it. Every figure of the harness and the studies is saved here.

  Returns ``path``: reports link the PNG.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  import matplotlib
  # Lay the figure out once (constrained layout), then freeze it, and find the tight box (what
  # ``bbox_inches="tight"`` computes, legends outside the axes included) once for both files: each layout
  # pass measures every text of every axes, which costs more than drawing it.
  fig.set_dpi(110)
  fig.draw_without_rendering()
  fig.set_layout_engine("none")
  box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(matplotlib.rcParams["savefig.pad_inches"])
  fig.savefig(path, dpi=110, bbox_inches=box)
  # No date in the SVG's metadata and fixed element ids: the same figure gives the same file.
  with matplotlib.rc_context({"svg.hashsalt": "wd_optax"}):
    fig.savefig(vector_path(path), format="svg", bbox_inches=box, metadata={"Date": None})
  if _KEPT is not None:
    _KEPT.append(fig)
  else:
    _pyplot().close(fig)
  return path


def legend_outside(ax, *, where: str = "right", handles=None, labels=None, ncol: int = 1, **kwargs):
  """A legend next to ``ax``, outside its data area: to the right (top-aligned) or below."""
  kw = dict(fontsize=7, frameon=False, borderaxespad=0.0, handlelength=2.6)
  kw.update(kwargs)
  args = (handles, labels) if handles is not None else ()
  if where == "right":
    return ax.legend(*args, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=ncol, **kw)
  if where == "below":
    return ax.legend(*args, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=ncol, **kw)
  raise ValueError(f"where must be 'right' or 'below', got {where!r}.")


def _stacked_sizes(index: int) -> tuple[float, float]:
  """(marker size, line width) of the ``index``-th line of an axes: later lines are drawn thinner and on top,
  so a line that coincides with an earlier one leaves a visible rim of it."""
  return max(5.5, 9.0 - 0.7 * index), max(1.3, 2.4 - 0.2 * index)


def draw_series(ax, steps: np.ndarray, values: np.ndarray, style: Style, *, label: str, gid: str,
                index: int = 0, band: bool = True):
  """Mean over seeds (rows of ``values``) as a line in ``style`` with a min–max band; returns the line.

  Markers are drawn at most about eight times per line, offset by ``index``, and the ``index``-th line of an
  axes is thinner and on top of the earlier ones, so that coinciding lines show each other.
  """
  every = max(1, len(steps) // 8)
  mean = np.nanmean(values, axis=0)
  size, width = _stacked_sizes(index)
  line, = ax.plot(steps, mean, label=label, markevery=(index % every, every), markersize=size - 1.5,
                  linewidth=width, zorder=2 + 0.01 * index, **style.kwargs())
  line.set_gid(gid)
  if band and values.shape[0] > 1:
    ax.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), alpha=0.13, color=style.color,
                    linewidth=0)
  return line


def _panels(results: Mapping[str, ArmResult], labels: list[str], styles: StyleMap) -> list[tuple[str, list[str]]]:
  """``[(title, labels)]``: everything in one axes if it has at most ``MAX_LINES`` lines, else one panel per
  swept arm and one per name prefix of the arms without a sweep (chunks of ``MAX_LINES``)."""
  order = {arm: i for i, arm in enumerate(styles.arms)}
  labels = sorted(labels, key=lambda l: (order.get(results[l].arm, len(order)), labels.index(l)))
  if len(labels) <= MAX_LINES:
    return [("", labels)]
  by_arm: dict[str, list[str]] = {}
  for label in labels:
    by_arm.setdefault(results[label].arm, []).append(label)
  panels, singles = [], {}
  for arm, members in by_arm.items():
    if len(members) > 1:
      for k in range(0, len(members), MAX_LINES + 1):
        panels.append((arm, members[k:k + MAX_LINES + 1]))
    else:
      singles.setdefault(arm.split("_")[0], []).extend(members)
  for prefix, members in singles.items():
    for k in range(0, len(members), MAX_LINES):
      chunk = members[k:k + MAX_LINES]
      title = chunk[0] if len(chunk) == 1 else f"{prefix}_…" if all(
          results[l].arm.startswith(prefix + "_") for l in chunk) else ""
      panels.append((title, chunk))
  return panels


def metric_figure(results: Mapping[str, ArmResult], metric: str, *, styles: StyleMap | None = None,
                  title: str = "", ylabel: str = "", labels: Sequence[str] | None = None, logy: bool = False):
  """The figure of :func:`plot_metric`, not saved (None if no label logged ``metric``)."""
  labels = [l for l in (labels or list(results)) if metric in results[l].series
            and np.isfinite(results[l].series[metric]).any()]
  if not labels:
    return None
  styles = styles or StyleMap.from_results(results)
  panels = _panels(results, labels, styles)
  plt = _pyplot()
  ncols = 1 if len(panels) == 1 else 2 if len(panels) <= 6 else 3
  nrows = math.ceil(len(panels) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols if ncols > 1 else 7.6, 2.9 * nrows + 0.9),
                           sharex=True, sharey=True, squeeze=False, layout="constrained")
  flat = axes.ravel()
  for ax, (panel_title, members) in zip(flat, panels):
    for index, label in enumerate(members):
      r = results[label]
      values = r.series[metric]
      keep = np.isfinite(values).any(axis=0)
      text = swept_text(r.swept) if (len(panels) > 1 and panel_title == r.arm and r.swept) else result_text(r)
      draw_series(ax, r.steps[keep], values[:, keep], styles.result(r), label=text, gid=label, index=index)
    if logy:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if panel_title:
      color = styles.arm(panel_title).color if panel_title in styles.arms else "black"
      ax.set_title(panel_title, fontsize=9, color=color)
    legend_outside(ax)
  for ax in flat[len(panels):]:
    ax.set_visible(False)
  for ax in axes[-1]:
    ax.set_xlabel("step")
  for ax in axes[:, 0]:
    ax.set_ylabel(ylabel or metric)
  fig.suptitle(f"{title or metric}\n({BAND_NOTE})", fontsize=10)
  return fig


def plot_metric(results: dict[str, ArmResult], metric: str, path: str, *, title: str = "", ylabel: str = "",
                labels: Sequence[str] | None = None, logy: bool = False,
                styles: StyleMap | None = None) -> str | None:
  """``metric`` over steps per label (mean over seeds, min–max band), panels past ``MAX_LINES`` lines.

  Returns the path written, or None if no label logged ``metric``.
  """
  fig = metric_figure(results, metric, styles=styles, title=title, ylabel=ylabel, labels=labels, logy=logy)
  return None if fig is None else save_figure(fig, path)


def plot_sweep(points: dict[str, tuple[np.ndarray, np.ndarray]], path: str, *, xlabel: str, ylabel: str,
               title: str = "", styles: StyleMap | None = None) -> str:
  """Final metric against a swept value, one line per arm: ``points[arm] = (x, (seeds, len(x)) values)``.

  Mean over seeds with a min–max band, log x axis; each arm in its style, hollow and filled markers alternating
  and later arms thinner and on top, so that arms on top of each other stay visible.
  """
  styles = styles or StyleMap(list(points))
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.6, 4.2), layout="constrained")
  for index, (arm, (x, values)) in enumerate(points.items()):
    style = styles.arm(arm)
    mean = np.nanmean(values, axis=0)
    size, width = _stacked_sizes(index)
    line, = ax.plot(x, mean, label=arm, markersize=size, linewidth=width, zorder=2 + 0.01 * index, **style.kwargs())
    line.set_gid(arm)
    ax.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0), alpha=0.13, color=style.color,
                    linewidth=0)
  ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(f"{title}\n({BAND_NOTE})" if title else BAND_NOTE, fontsize=10)
  ax.grid(alpha=0.3)
  legend_outside(ax)
  return save_figure(fig, path)


def standard_plots(results: dict[str, ArmResult], outdir: str, labels: Sequence[str] | None = None, *,
                   styles: StyleMap | None = None) -> list[str]:
  """Test accuracy, training loss and the norm and angular update of the scale-invariant weights over time.

  ``styles``: the study's :class:`StyleMap` (``StyleMap.from_config(config)``; default: from ``results``).
  """
  styles = styles or StyleMap.from_results(results)
  made = [
      plot_metric(results, "test_accuracy", os.path.join(outdir, "accuracy.png"), title="test accuracy",
                  labels=labels, styles=styles),
      plot_metric(results, "train_loss", os.path.join(outdir, "train_loss.png"), title="training loss",
                  labels=labels, logy=True, styles=styles),
      plot_metric(results, "norm/scale_invariant", os.path.join(outdir, "norms.png"),
                  title="norm of the scale-invariant weights", ylabel="‖w‖", labels=labels, styles=styles),
      plot_metric(results, "angle/scale_invariant", os.path.join(outdir, "angular_update.png"),
                  title="angular update of the scale-invariant weights", ylabel="radians / step",
                  labels=labels, logy=True, styles=styles),
  ]
  return [p for p in made if p]
