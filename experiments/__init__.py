"""Experiment drivers for wd_optax: the studies a researcher runs.

One entry point, one config per study, a work directory per run, nothing to edit::

  python -m experiments list                       # the registered studies
  python -m experiments early_decay --quick        # one study -> <workdir>/REPORT.md, metrics, plots
  python -m experiments reproduce --quick          # every study -> one REPORT.md with verdicts

Layout: :mod:`experiments.cli` (the command line: parse, check, run a study or ``reproduce``),
:mod:`experiments.checks` (every input checked, and the config validated, once before any work),
:mod:`experiments.config` (dataclass configs, ``--set key=value``), :mod:`experiments.data` and
:mod:`experiments.models` (data sets and networks), :mod:`experiments.train` (the harness: population,
step, evaluate, program, loop, workdir), :mod:`experiments.studies` (one module per study, plus the
registry) and :mod:`experiments.report` (statistics and REPORT.md).
"""

import os as _os


def _avoid_xla_cpu_eigen_deadlock() -> None:
  # XLA's CPU backend can wedge its multithreaded Eigen pool on large vmapped programs: every thread
  # parked, no progress, reproducibly in three_mechanisms' vmapped populations on 2 cores (also reported
  # upstream for vmap graphs). Single-threaded Eigen avoids it and only affects the CPU backend; it must
  # be set before jax starts its backends, hence here. Set the flag yourself to override.
  flags = _os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in flags:
    _os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


_avoid_xla_cpu_eigen_deadlock()
