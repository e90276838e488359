"""Several processes, one program: ``jax.distributed`` started from the command line.

``python -m experiments STUDY`` runs on one process unless told otherwise:

* ``--coordinator HOST:PORT --num-processes N --process-id I``: the explicit form (any cluster, or several
  processes on one machine); every process gets the same command but its own ``--process-id``; process 0
  runs the coordinator service on ``HOST:PORT``, which every process must reach.
* ``--distributed auto``: ``jax.distributed.initialize()`` with no arguments, which detects the cluster
  itself (SLURM from ``srun``'s environment, Cloud TPU pods from the TPU metadata, Open MPI; see jax's
  ``jax._src.clusters``). There is no silent detection without the flag: a single-task SLURM job or a
  one-host TPU VM stays a plain single-process run.

:func:`initialize` must run before anything touches a device (the CLI's up-front checks call
``jax.device_count()``). On CPU the cross-process collectives use gloo
(``jax_cpu_collectives_implementation``, unless ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` says otherwise); the
number of CPU devices per process comes from jax's own ``JAX_NUM_CPU_DEVICES`` (e.g. 4 in the tests).

In a multi-process run every process trains the same population over one global mesh (all devices of all
processes, ``train.num_devices=0``) and reads the (small) data set itself; with ``train.feed=auto`` each
process gathers on the host only the examples of its own devices' share of every batch
(:mod:`experiments.train.feed`);
``metrics.jsonl``, ``config.json``, plots and ``REPORT.md`` are written by process 0 only; orbax writes and
restores the checkpoints collectively (every process calls save and restore). The work directory must be
on a file system every process sees (NFS, a GCS bucket mounted with gcsfuse, ...).
"""

from __future__ import annotations

import os
from typing import Any

AUTO = "auto"


def add_arguments(parser) -> None:
  group = parser.add_argument_group("multi-process (jax.distributed; see docs/accelerators.md)")
  group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                     help="address of process 0's coordinator service (with --num-processes, --process-id)")
  group.add_argument("--num-processes", type=int, default=None, metavar="N", help="processes in the run")
  group.add_argument("--process-id", type=int, default=None, metavar="I", help="this process, 0 .. N-1")
  group.add_argument("--distributed", default=None, choices=[AUTO],
                     help="'auto': jax.distributed.initialize() detects the cluster (SLURM, TPU pod, Open MPI)")


def settings(args: Any) -> dict | None:
  """The ``jax.distributed.initialize`` keyword arguments the flags ask for (``None``: one process).

  Raises:
    ValueError: an incomplete or inconsistent set of flags (the message names them).
  """
  explicit = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
              "--process-id": args.process_id}
  given = [k for k, v in explicit.items() if v is not None]
  if args.distributed == AUTO:
    if given:
      raise ValueError(f"--distributed auto detects the cluster itself; drop {', '.join(given)} (or use "
                       "--coordinator, --num-processes and --process-id without it).")
    return {}
  if not given:
    return None
  missing = [k for k, v in explicit.items() if v is None]
  if missing:
    raise ValueError(f"{', '.join(given)} needs {', '.join(missing)} as well: a multi-process run takes "
                     "--coordinator HOST:PORT --num-processes N --process-id I (or --distributed auto).")
  host, sep, port = args.coordinator.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator must be HOST:PORT with a port in 1..65535, got {args.coordinator!r}.")
  if args.num_processes < 1:
    raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}.")
  if not 0 <= args.process_id < args.num_processes:
    raise ValueError(f"--process-id must be between 0 and {args.num_processes - 1} (--num-processes "
                     f"{args.num_processes}), got {args.process_id}.")
  return {"coordinator_address": args.coordinator, "num_processes": args.num_processes,
          "process_id": args.process_id}


def initialize(kwargs: dict) -> None:
  """Starts ``jax.distributed`` with ``kwargs`` (from :func:`settings`); before any device is touched."""
  import jax
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    raise RuntimeError("jax.distributed must start before jax initialises its devices; something touched a "
                       "device before experiments.distributed.initialize.")
  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def is_primary() -> bool:
  """Process 0 (or the only process): the one that writes metrics, plots and reports."""
  import jax
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reached ``name`` (nothing on a single process)."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def agree(value: int) -> int:
  """Process 0's ``value`` on every process (as is on a single process)."""
  import jax
  if jax.process_count() == 1:
    return value
  import numpy as np
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
