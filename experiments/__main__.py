"""Command line: ``python -m experiments <study> | list | reproduce``.

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


class _ArgumentError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """argparse with its errors raised (printed by :func:`main` as one ``error:`` line) instead of exiting."""

  def error(self, message):
    raise _ArgumentError(message)


def _parser() -> argparse.ArgumentParser:
  from experiments import studies
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
  from experiments import distributed
  distributed.add_arguments(parser)
  return parser


def study_help(name: str) -> str:
  """``STUDY --help``: the study's arms (overrides and sweeps) and every config field with its default,
  quick and full where they differ."""
  import dataclasses
  from experiments import config as config_lib
  from experiments import studies
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
  compiled (see :func:`experiments.runner.check_study`).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  from experiments import runner, studies
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
  from experiments import distributed
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
      runner.check_reproduce(workdir, quick=args.quick, seeds=args.seeds, overrides=args.overrides)
    else:
      workdir = args.workdir or os.path.join("runs", f"{args.command}{suffix}")
      runner.check_study(studies.get(args.command), workdir, quick=args.quick, seeds=args.seeds,
                         overrides=args.overrides)
  except (KeyError, ValueError, TypeError, OSError) as e:
    return _error(e.args[0] if isinstance(e, KeyError) and e.args else e)
  enable_compilation_cache()
  if args.command == "reproduce":
    path = runner.reproduce(workdir, quick=args.quick, seeds=args.seeds, overrides=args.overrides,
                            progress=progress)
    if distributed.is_primary():
      print(f"wrote {path}")
    return 0
  try:
    section = runner.run_study(args.command, workdir, quick=args.quick, seeds=args.seeds,
                               overrides=args.overrides, progress=progress)
  except TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if not distributed.is_primary():
    return 0
  for claim in section.claims:
    print(f"{claim.id:6s} {claim.verdict:15s} {claim.measured}: {claim.effect}")
  print(f"wrote {os.path.join(workdir, 'REPORT.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
