"""Run one study (train, analyse, plot, report) or all of them (``reproduce``)."""

from __future__ import annotations

import os
import time
import traceback
from typing import Callable, Sequence

from experiments import config as config_lib
from experiments import report as report_lib
from experiments import studies as studies_lib
from experiments.train import plots as plots_lib
from experiments.train.run import run_experiment


def study_config(study: studies_lib.Study, *, quick: bool, seeds: int | None = None,
                 overrides: Sequence[str] = ()) -> config_lib.ExperimentConfig:
  """The study's config with ``--seeds`` and ``--set`` overrides applied (validated)."""
  config = study.make_config(quick)
  if seeds is not None:
    config.seeds = seeds
  for assignment in overrides:
    config_lib.apply_override(config, assignment)
  config_lib.validate(config)
  return config


def run_study(name: str, workdir: str, *, quick: bool = False, seeds: int | None = None,
              overrides: Sequence[str] = (), progress: bool | None = None,
              log: Callable[[str], None] = print, plot_prefix: str = "") -> report_lib.StudySection:
  """Trains and analyses study ``name`` in ``workdir``; writes ``REPORT.md`` there and returns its section.

  ``plot_prefix`` is prepended to plot paths in the returned section (for a report one directory up).
  """
  study = studies_lib.get(name)
  config = study_config(study, quick=quick, seeds=seeds, overrides=overrides)
  start = time.time()
  hooks = study.hooks(config) if study.hooks else None
  results = run_experiment(config, workdir, hooks=hooks, progress=progress, log=log)
  claims, table = study.analyze(results, config)
  plots = plots_lib.standard_plots(results, workdir, styles=plots_lib.StyleMap.from_config(config))
  if study.plots:
    plots += study.plots(results, config, workdir)
  section = report_lib.StudySection(
      name=name, title=study.title, setting=study.setting + "\n\n" + describe(config, quick), claims=claims,
      plots=[os.path.basename(p) for p in plots], table=table, elapsed_s=time.time() - start)
  report_lib.write_report(os.path.join(workdir, "REPORT.md"), [section], title=f"Study `{name}`")
  section.plots = [os.path.join(plot_prefix, p) for p in section.plots]
  return section


def describe(config: config_lib.ExperimentConfig, quick: bool) -> str:
  d, m, o, t = config.data, config.model, config.optim, config.train
  arms = ", ".join(f"`{a.name}`" + (f" ({', '.join(f'{k}={v}' for k, v in a.optim.items())})" if a.optim else "")
                   + (f" swept over {a.sweep}" if a.sweep else "") for a in config.arms)
  return (f"Mode: {'quick' if quick else 'full'}. Data: `{d.name}`, {d.n_train or 'all'} training examples, "
          f"label noise {d.label_noise:g}. Model: `{m.name}` (norm `{m.norm}`, {m.kwargs or 'defaults'}). "
          f"Base optimizer: `{o.name}`, η={o.learning_rate:g} ({o.lr_schedule}), momentum {o.momentum:g}, "
          f"decay `{o.decay}` on `{o.decay_mask}`. Training: {t.steps} steps of batch {t.batch_size}, "
          f"{config.seeds} seeds per arm (vmapped). Arms: {arms}.")


PREAMBLE = """\
Produced by `python -m experiments reproduce{quick}`. Every study trains all of its arms and seeds as
vmapped populations on the bundled data (no download), then tests the claims of `docs/papers.md` §7 with
paired 95% intervals over seeds. Small-scale effects are a few points at most; the verdicts say what
these settings can resolve, not what the papers found at full scale."""


def reproduce(workdir: str, *, quick: bool = False, seeds: int | None = None, names: Sequence[str] | None = None,
              overrides: Sequence[str] = (), progress: bool | None = None,
              log: Callable[[str], None] = print) -> str:
  """Runs every registered study (or ``names``) under ``workdir/<study>`` and writes ``workdir/REPORT.md``.

  A study that fails is reported with its error and the others still run.
  """
  os.makedirs(workdir, exist_ok=True)
  sections = []
  start = time.time()
  for name in names or studies_lib.names():
    try:
      sections.append(run_study(name, os.path.join(workdir, name), quick=quick, seeds=seeds, overrides=overrides,
                                progress=progress, log=log, plot_prefix=name))
    except Exception:  # a broken study must not hide the others' results
      study_title = name
      try:
        study_title = studies_lib.get(name).title
      except Exception:
        pass
      sections.append(report_lib.StudySection(name=name, title=study_title, setting="", claims=[], plots=[],
                                              error=traceback.format_exc(limit=3)))
      log(f"[{name}] FAILED:\n{sections[-1].error}")
  preamble = PREAMBLE.format(quick=" --quick" if quick else "") + f"\n\nTotal run time: {time.time() - start:.0f} s."
  return report_lib.write_report(os.path.join(workdir, "REPORT.md"), sections,
                                 title="Reproducing the weight-decay claims", preamble=preamble)
