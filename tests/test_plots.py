"""Figures a person can read: one style per arm across every figure of a study, panels instead of crowded axes,
legends outside the data. Checked on the artists matplotlib drew, for every study's figures on synthetic
results shaped like its quick config."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib.transforms import Bbox

from experiments import studies
from experiments.train import make_groups
from experiments.train import plots as plots_lib
from experiments.train.metrics import ArmResult

SEEDS = 4
STEPS = np.arange(50, 550, 50)
LAYERS = ("layers/0/kernel", "layers/1/kernel")


def _synthetic(config) -> dict[str, ArmResult]:
  """Every label of ``config`` with smooth, label-dependent series of every metric the plots read."""
  results = {}
  ramp = np.linspace(0.0, 1.0, len(STEPS))
  for group in make_groups(config):
    for member in group.members:
      if member.label in results:
        continue
      rng = np.random.default_rng(zlib.crc32(member.label.encode()))
      level = rng.uniform(0.3, 0.6)
      noise = lambda scale: scale * rng.standard_normal((SEEDS, len(STEPS)))
      series = {"test_accuracy": level + 0.2 * ramp + noise(0.01), "train_accuracy": 0.5 + 0.4 * ramp + noise(0.01),
                "train_loss": np.exp(-ramp * rng.uniform(1, 3)) + 0.1 + np.abs(noise(0.01)),
                "norm/scale_invariant": 10 + 5 * ramp + noise(0.1),
                "angle/scale_invariant": 1e-2 * (1.01 - ramp) + np.abs(noise(1e-4)),
                "jacobian_norm": 10 + 5 * ramp + noise(0.2)}
      for layer in LAYERS:
        series[f"eff_lr/{layer}"] = np.tile(1e-3 * (1.01 - ramp), (SEEDS, 1))
        series[f"angle/{layer}"] = 10 * series[f"eff_lr/{layer}"] * np.exp(noise(0.01))
      for layer in ("layers/0", "layers/1", "classifier"):
        series[f"gamma_eff/{layer}"] = 1e-3 * np.exp(3 * ramp) * np.exp(noise(0.01))
        series[f"cos_f/{layer}"] = series[f"cos_g/{layer}"] = 0.3 + 0.5 * ramp + noise(0.01)
      results[member.label] = ArmResult(label=member.label, arm=member.arm, seeds=list(range(SEEDS)),
                                        swept=dict(member.swept), steps=STEPS, series=series)
  return results


@pytest.fixture(scope="module")
def figures_of(tmp_path_factory):
  """``figures_of(study) -> (results, styles, {png path: drawn figure})``, each study drawn once per module."""
  cache = {}
  with plots_lib.keep_figures() as kept:
    def draw(name):
      if name not in cache:
        study = studies.get(name)
        config = study.make_config(True)
        results = _synthetic(config)
        styles = plots_lib.StyleMap.from_config(config)
        outdir = str(tmp_path_factory.mktemp(name))
        start = len(kept)
        paths = plots_lib.standard_plots(results, outdir, styles=styles)
        if study.plots:
          paths += study.plots(results, config, outdir)
        figures = kept[start:]
        assert len(figures) == len(paths)
        for fig in figures:
          fig.canvas.draw()
        cache[name] = (results, styles, dict(zip(paths, figures)))
      return cache[name]
    yield draw


# decay_zoo's figures (20 arms, 60 members) cost as much as all the others together; its standard figures are
# the same code as every other study's, checked here for each of them, and its own figure is checked in
# tests/test_decay_zoo_study.py.
LARGE = {"decay_zoo"}
STUDY_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name in LARGE else name for name in studies.names()]


@pytest.fixture(params=STUDY_PARAMS)
def study_figures(request, figures_of):
  return figures_of(request.param)


def _arm_lines(fig):
  """``(axes, gid, (colour, linestyle, marker, filled))`` of every line drawn for an arm (its gid is the label)."""
  for ax in fig.axes:
    for line in ax.get_lines():
      if line.get_gid():
        filled = line.get_markerfacecolor() not in ("none", "None")
        yield ax, line.get_gid(), (mcolors.to_hex(line.get_color()), line.get_linestyle(), line.get_marker(), filled)


# --- the style map ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [5, 12, 24, 60])
def test_style_map_gives_every_arm_its_own_colour_and_line_style(count):
  styles = plots_lib.StyleMap([f"arm{i}" for i in range(count)])
  pairs = [(mcolors.to_hex(styles.arm(f"arm{i}").color), styles.arm(f"arm{i}").linestyle) for i in range(count)]
  assert len(set(pairs)) == count
  # Neighbours in the arm list (often the arms compared with each other) never share a dash pattern or marker.
  for i in range(count - 1):
    a, b = styles.arm(f"arm{i}"), styles.arm(f"arm{i + 1}")
    assert a.linestyle != b.linestyle and a.marker != b.marker and a.color != b.color


def test_swept_points_of_an_arm_keep_its_hue_and_differ_from_each_other():
  styles = plots_lib.StyleMap(["a", "b"], {"b": {"learning_rate": [0.1, 0.01, 1.0], "weight_decay": [0.0, 0.5]}})
  base = mcolors.rgb_to_hsv(mcolors.to_rgb(styles.arm("b").color))
  members = [styles.member("b", {"learning_rate": lr, "weight_decay": wd}) for lr in (0.01, 0.1, 1.0)
             for wd in (0.0, 0.5)]
  assert len({(m.color, m.linestyle) for m in members}) == 6
  for m in members:
    hsv = mcolors.rgb_to_hsv(mcolors.to_rgb(m.color))
    assert abs(hsv[0] - base[0]) < 0.02  # same hue, other lightness
  # Darker for the smaller learning rate, whatever order the config listed them in.
  dark, light = (mcolors.rgb_to_hsv(mcolors.to_rgb(styles.member("b", {"learning_rate": lr}).color))[2]
                 for lr in (0.01, 1.0))
  assert dark < light
  with pytest.raises(KeyError, match="arm 'c' is not in this style map; its arms: a, b"):
    styles.arm("c")


# --- every figure of every study ----------------------------------------------------------------------------------

def test_an_arm_has_one_style_in_every_figure_of_its_study(study_figures):
  results, styles, figures = study_figures
  seen: dict[str, tuple] = {}
  where: dict[str, set] = {}
  for path, fig in figures.items():
    for _, gid, style in _arm_lines(fig):
      where.setdefault(gid, set()).add(path)
      # A line per swept point is styled as that point; a line across an arm's sweep (e.g. accuracy against λ)
      # as the arm itself, whose hue its points share.
      expected = styles.result(results[gid]) if gid in results else styles.arm(gid)
      if style[1] == "None":  # a single point (a marker, no line): colour and marker
        assert (style[0], style[2]) == (mcolors.to_hex(expected.color), expected.marker), (gid, path)
        continue
      assert seen.setdefault(gid, style) == style, f"{gid} drawn as {style} in {path}, as {seen[gid]} before"
      assert style[:3] == (mcolors.to_hex(expected.color), expected.linestyle, expected.marker)
  assert set(results) <= set(seen)  # every arm (and swept point) is in some figure
  if len(figures) > 4:  # a study with figures of its own: some arm is in a standard and a study figure
    assert any(len(paths) > 1 and any("accuracy.png" in p for p in paths) for paths in where.values())


def test_lines_in_one_axes_are_few_and_distinguishable(study_figures):
  _, _, figures = study_figures
  for path, fig in figures.items():
    for ax in fig.axes:
      lines = [(gid, style) for a, gid, style in _arm_lines(fig) if a is ax]
      assert len(lines) <= plots_lib.MAX_LINES + 1, f"{len(lines)} lines in one axes of {path}"
      assert len({style for _, style in lines}) == len({gid for gid, _ in lines}), path


def test_legends_lie_outside_every_axes(study_figures):
  _, _, figures = study_figures
  for path, fig in figures.items():
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    assert legends, path
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
    for legend in legends:
      box = legend.get_window_extent(renderer)
      for axes_box in boxes:
        overlap = Bbox.intersection(box, axes_box)
        assert overlap is None or overlap.width * overlap.height < 1.0, f"a legend covers an axes in {path}"


def test_many_lines_are_split_into_panels_one_per_swept_arm(figures_of):
  results, _, figures = figures_of("fixnorm")
  fig = next(f for p, f in figures.items() if p.endswith("angular_update.png"))
  panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_lines()]
  arms = list(dict.fromkeys(r.arm for r in results.values()))
  assert len(panels) == len(arms) == 6  # 4 classifier norms, decay on top, SGD: 24 lines in one axes before
  assert [ax.get_title() for ax in panels] == arms
  assert len({ax.get_ylim() for ax in panels}) == 1  # shared axes: the panels compare


def test_a_figure_with_few_lines_keeps_one_axes(figures_of):
  _, _, figures = figures_of("early_decay")
  for fig in figures.values():
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1
