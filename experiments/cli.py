"""The command line, ``python -m experiments <study> | list | reproduce``: parse, check once, run.

The arguments are parsed here, every input is checked up front (:mod:`experiments.checks`, which validates
the config once), and the checked config is run: :func:`run_study` trains a study's populations in its work
directory (:func:`experiments.train.workdir.run_experiment`), analyses them and writes ``REPORT.md``;
:func:`reproduce` does so for every study and writes one report.

Examples::

  python -m experiments list
  python -m experiments early_decay --quick --workdir /tmp/early
  python -m experiments decay_placement --seeds 8 --set train.steps=3000 --set data.label_noise=0.3
  python -m experiments reproduce --quick          # every study, REPORT.md in runs/reproduce-quick
  python -m experiments three_mechanisms --help    # the study's arms and config fields (quick / full)
  python -m experiments reproduce --quick --set three_mechanisms.arms.sgd_l2_bn.weight_decay=1e-3
  python -m experiments early_decay --coordinator host0:1234 --num-processes 2 --process-id 0 \
      --set train.num_devices=0                    # process 0 of 2 (the other: --process-id 1)
  srun python -m experiments early_decay --distributed auto --set train.num_devices=0   # SLURM / TPU pod

Every input (overrides, the data directory, model, optimizers, device count, work directory) is checked
before any data is read or program compiled; a bad one is one ``error: ...`` line on stderr and exit code 2.
Exit code 1: a run diverged (``train.on_nan=stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Callable, Sequence

from experiments import checks
from experiments import config as config_lib
from experiments import distributed
from experiments import report as report_lib
from experiments import studies
from experiments.train import plots as plots_lib
from experiments.train.workdir import run_experiment


class _ArgumentError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """argparse with its errors raised (printed by :func:`main` as one ``error:`` line) instead of exiting."""

  def error(self, message):
    raise _ArgumentError(message)


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="python -m experiments",
      description="Weight-decay studies: train, analyse, report. Studies: " + ", ".join(studies.names()) + ". "
                  "'python -m experiments STUDY --help' lists a study's arms and config fields.")
  parser.add_argument("command", help="a study name, 'list', or 'reproduce'")
  parser.add_argument("--quick", action="store_true", help="small settings (about a minute per study on 2 cores)")
  parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the study's)")
  parser.add_argument("--workdir", default=None, help="work directory (default: runs/<study>[-quick])")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field, e.g. train.steps=2000 or arms.always.weight_decay=1e-3; "
                           "STUDY.KEY=VALUE (e.g. three_mechanisms.arms.sgd_l2_bn.learning_rate=0.05) applies "
                           "to one study only (for reproduce); repeatable")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bar (terminal) or progress lines (logs, nohup, SLURM)")
  distributed.add_arguments(parser)
  return parser


def study_help(name: str) -> str:
  """``STUDY --help``: the study's arms (overrides and sweeps) and every config field with its default,
  quick and full where they differ."""
  import dataclasses
  study = studies.get(name)
  quick, full = study.make_config(True), study.make_config(False)
  lines = [f"usage: python -m experiments {name} [--quick] [--seeds N] [--workdir W] [--set KEY=VALUE]...", "",
           study.title, ""]

  def arm_lines(config):
    out = []
    for arm in config.arms:
      parts = [f"{k}={v}" for k, v in arm.optim.items()] + [f"{k} in {v}" for k, v in arm.sweep.items()]
      out.append(f"  {arm.name:22s} {', '.join(parts) or '(the base optim)'}")
    return out

  quick_arms, full_arms = arm_lines(quick), arm_lines(full)
  if quick_arms == full_arms:
    lines += ["arms (set one with --set arms.ARM.FIELD=VALUE):", *quick_arms]
  else:
    lines += ["arms with --quick (set one with --set arms.ARM.FIELD=VALUE):", *quick_arms, "",
              "arms of the full run:", *full_arms]
  lines += ["", "config fields (--set KEY=VALUE; quick / full where they differ):"]

  def fields(q, f, prefix):
    for field in dataclasses.fields(q):
      if field.name == "arms":
        continue
      qv, fv = getattr(q, field.name), getattr(f, field.name)
      if dataclasses.is_dataclass(qv):
        if hasattr(qv, "NAME"):  # an optimizer spec: its family first
          value = json.dumps(qv.name) if qv.name == fv.name else f"{json.dumps(qv.name)} (quick) / {json.dumps(fv.name)} (full)"
          yield f"  {prefix}{field.name + '.name':{max(1, 30 - len(prefix))}s} {value}"
        yield from fields(qv, fv, f"{prefix}{field.name}.")
        continue
      value = json.dumps(qv) if qv == fv else f"{json.dumps(qv)} (quick) / {json.dumps(fv)} (full)"
      yield f"  {prefix}{field.name:{max(1, 30 - len(prefix))}s} {value}"

  lines += list(fields(quick, full, ""))
  overridden = sorted({k for a in quick.arms + full.arms for k in list(a.optim) + list(a.sweep)})
  if overridden:
    lines += ["", f"optim fields that arms set themselves: {', '.join(overridden)} (an optim.FIELD override of "
                  "one that every arm sets is refused; use arms.ARM.FIELD)."]
  from experiments import optimizers
  names = study.optimizers or optimizers.names()
  lines.append(f"optim.name values (optimizer families, experiments/optimizers/): {', '.join(names)}.")
  return "\n".join(lines)


def _first_positional(argv: list[str]) -> str | None:
  takes_value = {"--seeds", "--workdir", "--set", "--coordinator", "--num-processes", "--process-id",
                 "--distributed"}
  skip = False
  for arg in argv:
    if skip:
      skip = False
      continue
    if arg in takes_value:
      skip = True
      continue
    if not arg.startswith("-"):
      return arg
  return None


def enable_compilation_cache() -> None:
  """Persistent XLA cache, so a second run of the same study skips compilation."""
  import jax
  cache = os.environ.get("WD_OPTAX_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "wd_optax", "jax"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _error(message: str) -> int:
  print("error: " + " ".join(str(message).split()), file=sys.stderr)
  return 2


def main(argv: list[str] | None = None) -> int:
  """Runs the command line; returns the exit code (0 done, 1 training diverged, 2 bad input).

  Every bad input is reported as one ``error: ...`` line on stderr before any data is read or any program
  compiled (see :func:`experiments.checks.check_study`); the study then runs with the checked config.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  command = _first_positional(argv)
  if command in studies.REGISTRY and ("-h" in argv or "--help" in argv):
    print(study_help(command))
    return 0
  try:
    args = _parser().parse_args(argv)
  except _ArgumentError as e:
    return _error(e)
  if args.seeds is not None and args.seeds < 1:
    return _error(f"--seeds must be >= 1, got {args.seeds}")
  if args.command == "list":
    for name in studies.names():
      study = studies.get(name)
      print(f"{name:20s} {study.title}")
    return 0
  try:
    cluster = distributed.settings(args)
  except ValueError as e:
    return _error(e)
  if cluster is not None:
    # Before the up-front checks: they count the devices, which starts jax's backends.
    try:
      distributed.initialize(cluster)
    except Exception as e:  # noqa: BLE001 (a coordinator that cannot be reached, a cluster not detected)
      return _error(f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in cluster.items())}) "
                    f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
  progress = False if args.no_progress else None
  suffix = "-quick" if args.quick else ""
  from experiments.train import TrainingDiverged
  try:
    if args.command == "reproduce":
      workdir = args.workdir or os.path.join("runs", f"reproduce{suffix}")
      # Every study's whole config, data, model and optimizers, before hours of training.
      checked = checks.check_reproduce(workdir, quick=args.quick, seeds=args.seeds, overrides=args.overrides)
    else:
      workdir = args.workdir or os.path.join("runs", f"{args.command}{suffix}")
      checked = checks.check_study(studies.get(args.command), workdir, quick=args.quick, seeds=args.seeds,
                                   overrides=args.overrides)
  except (KeyError, ValueError, TypeError, OSError) as e:
    return _error(e.args[0] if isinstance(e, KeyError) and e.args else e)
  enable_compilation_cache()
  if args.command == "reproduce":
    path = reproduce(workdir, quick=args.quick, seeds=args.seeds, overrides=args.overrides, progress=progress,
                     checked=checked)
    if distributed.is_primary():
      print(f"wrote {path}")
    return 0
  try:
    section = run_study(args.command, workdir, quick=args.quick, progress=progress, checked=checked)
  except TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if not distributed.is_primary():
    return 0
  for claim in section.claims:
    print(f"{claim.id:6s} {claim.verdict:15s} {claim.measured}: {claim.effect}")
  print(f"wrote {os.path.join(workdir, 'REPORT.md')}")
  return 0


def run_study(name: str, workdir: str, *, quick: bool = False, seeds: int | None = None,
              overrides: Sequence[str] = (), progress: bool | None = None,
              log: Callable[[str], None] = print, plot_prefix: str = "",
              reproduce: bool = False, checked: tuple | None = None) -> report_lib.StudySection:
  """Trains and analyses study ``name`` in ``workdir``; writes ``REPORT.md`` there and returns its section.

  Everything is checked first (:func:`experiments.checks.check_study`) unless ``checked``, the
  ``(config, hooks)`` that check returned, is given (then ``seeds`` and ``overrides`` are not read).
  ``plot_prefix`` is prepended to plot paths in the returned section (for a report one directory up);
  ``reproduce``: the overrides are those of a ``reproduce`` run (see :func:`experiments.checks.study_config`).
  """
  study = studies.get(name)
  if checked is None:
    checked = checks.check_study(study, workdir, quick=quick, seeds=seeds, overrides=overrides, reproduce=reproduce)
  config, hooks = checked
  start = time.time()
  results = run_experiment(config, workdir, hooks=hooks, progress=progress, log=log)
  claims, table = study.analyze(results, config)
  primary = distributed.is_primary()  # plots and the report: process 0 of a multi-process run only
  plots = plots_lib.standard_plots(results, workdir, styles=plots_lib.StyleMap.from_config(config)) if primary else []
  if study.plots and primary:
    plots += study.plots(results, config, workdir)
  section = report_lib.StudySection(
      name=name, title=study.title, setting=study.setting_text(config) + "\n\n" + describe(config, quick),
      claims=claims, plots=[os.path.basename(p) for p in plots], table=table, elapsed_s=time.time() - start)
  if primary:
    report_lib.write_report(os.path.join(workdir, "REPORT.md"), [section], title=f"Study `{name}`")
  section.plots = [os.path.join(plot_prefix, p) for p in section.plots]
  return section


def describe(config: config_lib.ExperimentConfig, quick: bool) -> str:
  """The report's one-paragraph setting. Base optimizer fields that every arm sets itself are not claimed as
  the base value; they are listed as set per arm (the arms show their values)."""
  d, m, o, t = config.data, config.model, config.optim, config.train
  arms = ", ".join(f"`{a.name}`" + (f" ({', '.join(f'{k}={v}' for k, v in a.optim.items())})" if a.optim else "")
                   + (f" model {a.model}" if a.model else "")
                   + (f" swept over {a.sweep}" if a.sweep else "") for a in config.arms)
  per_arm = [f for f in ("name", "learning_rate", "lr_schedule", "momentum", "decay", "decay_mask")
             if config.arms and all(f in a.optim or f in a.sweep for a in config.arms)]
  base = [f"`{o.name}`" if "name" not in per_arm else "",
          (f"η={o.learning_rate:g} ({o.lr_schedule})" if "learning_rate" not in per_arm
           else f"{o.lr_schedule} schedule") if "lr_schedule" not in per_arm
          else (f"η={o.learning_rate:g}" if "learning_rate" not in per_arm else ""),
          f"momentum {o.momentum:g}" if hasattr(o, "momentum") and "momentum" not in per_arm else "",
          (f"decay `{o.decay}`" if hasattr(o, "decay") and "decay" not in per_arm else "decay")
          + (f" on `{checks.decay_mask_text(o.decay_mask)}`" if "decay_mask" not in per_arm else "")]
  base = [b.strip() for b in base if b.strip() and b.strip() != "decay"]
  if per_arm:
    base.append(f"set per arm: {', '.join(per_arm)}")
  return (f"Mode: {'quick' if quick else 'full'}. Data: `{d.name}`, {d.n_train or 'all'} training examples, "
          f"label noise {d.label_noise:g}. Model: `{m.name}` (norm `{m.norm}`, {m.kwargs or 'defaults'}). "
          f"Base optimizer: {', '.join(base)}. Training: {t.steps} steps of batch {t.batch_size}, "
          f"{config.seeds} seeds per arm (vmapped). Arms: {arms}.")


PREAMBLE = """\
Produced by `python -m experiments reproduce{quick}`. Every study trains all of its arms and seeds as
vmapped populations on the bundled data (no download), then tests the claims of `docs/papers.md` §7 with
paired 95% intervals over seeds. Small-scale effects are a few points at most; the verdicts say what
these settings can resolve, not what the papers found at full scale."""


def reproduce(workdir: str, *, quick: bool = False, seeds: int | None = None, names: Sequence[str] | None = None,
              overrides: Sequence[str] = (), progress: bool | None = None,
              log: Callable[[str], None] = print, checked: dict | None = None) -> str:
  """Runs every registered study (or ``names``) under ``workdir/<study>`` and writes ``workdir/REPORT.md``.

  ``checked``: ``{study: (config, hooks)}`` from :func:`experiments.checks.check_reproduce` (a study not in
  it is checked when it runs). A study that fails is reported with its error and the others still run.
  """
  checked = checked or {}
  os.makedirs(workdir, exist_ok=True)
  sections = []
  start = time.time()
  for name in names or studies.reproduced():
    try:
      sections.append(run_study(name, os.path.join(workdir, name), quick=quick, seeds=seeds, overrides=overrides,
                                progress=progress, log=log, plot_prefix=name, reproduce=True,
                                checked=checked.get(name)))
    except Exception as e:  # a broken study must not hide the others' results
      study_title = name
      try:
        study_title = studies.get(name).title
      except Exception:
        pass
      message = str(e).strip().splitlines()
      sections.append(report_lib.StudySection(name=name, title=study_title, setting="", claims=[], plots=[],
                                              error=traceback.format_exc(limit=3),
                                              error_summary=f"{type(e).__name__}: {message[0]}" if message
                                              else type(e).__name__))
      log(f"[{name}] FAILED:\n{sections[-1].error}")
  preamble = PREAMBLE.format(quick=" --quick" if quick else "") + f"\n\nTotal run time: {time.time() - start:.0f} s."
  left_out = {n: why for n, why in studies.NOT_IN_REPRODUCE.items() if not names}
  if left_out:
    preamble += "\n\nNot run here: " + "; ".join(f"`{n}` ({why})" for n, why in left_out.items()) + "."
  if not distributed.is_primary():
    return os.path.join(workdir, "REPORT.md")
  return report_lib.write_report(os.path.join(workdir, "REPORT.md"), sections,
                                 title="Reproducing the weight-decay claims", preamble=preamble)
