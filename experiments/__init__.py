"""Experiment drivers for wd_optax: the studies a researcher runs.

One entry point, one config per study, a work directory per run, nothing to edit::

  python -m experiments list                       # the registered studies
  python -m experiments early_decay --quick        # one study -> <workdir>/REPORT.md, metrics, plots
  python -m experiments reproduce --quick          # every study -> one REPORT.md with verdicts

Layout: :mod:`experiments.config` (dataclass configs, ``--set key=value``), :mod:`experiments.data` and
:mod:`experiments.models` (data sets and networks), :mod:`experiments.train` (the harness),
:mod:`experiments.studies` (one module per study, plus the registry) and :mod:`experiments.report`
(statistics and REPORT.md).
"""
