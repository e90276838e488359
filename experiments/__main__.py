"""Command line: ``python -m experiments <study> | list | reproduce``.

Examples::

  python -m experiments list
  python -m experiments early_decay --quick --workdir /tmp/early
  python -m experiments decay_placement --seeds 8 --set train.steps=3000 --set data.label_noise=0.3
  python -m experiments reproduce --quick          # every study, REPORT.md in runs/reproduce-quick
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
  from experiments import studies
  parser = argparse.ArgumentParser(
      prog="python -m experiments",
      description="Weight-decay studies: train, analyse, report. Studies: " + ", ".join(studies.names()) + ".")
  parser.add_argument("command", help="a study name, 'list', or 'reproduce'")
  parser.add_argument("--quick", action="store_true", help="small settings (about a minute per study on 2 cores)")
  parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the study's)")
  parser.add_argument("--workdir", default=None, help="work directory (default: runs/<study>[-quick])")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field, e.g. train.steps=2000 or arms.always.weight_decay=1e-3; "
                           "repeatable")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  return parser


def enable_compilation_cache() -> None:
  """Persistent XLA cache, so a second run of the same study skips compilation."""
  import jax
  cache = os.environ.get("WD_OPTAX_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "wd_optax", "jax"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from experiments import config as config_lib
  from experiments import runner, studies
  if args.seeds is not None and args.seeds < 1:
    print(f"error: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
    return 2
  if args.command == "list":
    for name in studies.names():
      study = studies.get(name)
      print(f"{name:20s} {study.title}")
    return 0
  progress = False if args.no_progress else None
  suffix = "-quick" if args.quick else ""
  try:
    if args.command == "reproduce":
      # Validate every study's overrides before hours of training.
      for name in studies.names():
        runner.study_config(studies.get(name), quick=args.quick, seeds=args.seeds, overrides=args.overrides)
      enable_compilation_cache()
      workdir = args.workdir or os.path.join("runs", f"reproduce{suffix}")
      path = runner.reproduce(workdir, quick=args.quick, seeds=args.seeds, overrides=args.overrides,
                              progress=progress)
      print(f"wrote {path}")
      return 0
    study = studies.get(args.command)
    runner.study_config(study, quick=args.quick, seeds=args.seeds, overrides=args.overrides)
  except (KeyError, ValueError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    print(f"error: {message}", file=sys.stderr)
    return 2
  enable_compilation_cache()
  workdir = args.workdir or os.path.join("runs", f"{args.command}{suffix}")
  from experiments.train import TrainingDiverged
  try:
    section = runner.run_study(args.command, workdir, quick=args.quick, seeds=args.seeds,
                               overrides=args.overrides, progress=progress)
  except TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for claim in section.claims:
    print(f"{claim.id:6s} {claim.verdict:15s} {claim.measured}: {claim.effect}")
  print(f"wrote {os.path.join(workdir, 'REPORT.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
