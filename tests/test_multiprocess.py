"""Multi-process runs (``jax.distributed``) on one machine: subprocesses, gloo CPU collectives.

* the command-line flags: every bad combination is one ``error:`` line (exit 2) before anything runs, and
  ``jax.distributed.initialize`` is called with the flags' values before the up-front checks touch a device
  (``--distributed auto``: with no arguments);
* 2 processes × 4 CPU devices, 1 process × 8 and 1 process × 1 device train the same small population
  (20 steps; mesh 2 members × 4 data on 8 devices, so the members axis spans the processes and each
  member's batch is split within one) to the same parameters and losses (float32 round-off of each
  array's scale); ``metrics.jsonl`` is written once (process 0: one line per member and logged step); the
  two processes are host-fed (``train.feed=auto``) and each gathers only its devices' blocks of a batch;
* one process SIGKILLed after the first checkpoint (the other then torn down, as a scheduler would), the same
  command again: it resumes from that checkpoint and ends bit-identical to the uninterrupted run;
* slow: the same with a K-FAC arm (three_mechanisms' hooks), and the CLI end to end (plots and REPORT.md
  from process 0).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from experiments import distributed
from _tol import assert_close_scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_multiprocess_worker.py")
TIMEOUT = 400  # seconds per launch; a run takes well under a minute on an idle 2-core machine


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(cpu_devices: int, cache: str) -> dict:
  out = dict(os.environ)
  flags = [f for f in out.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  out.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(cpu_devices),
             WD_OPTAX_JAX_CACHE=cache, PYTHONPATH=ROOT)
  return out


def launch(command: list[str], processes: int, cpu_devices: int, cache: str, logs: str) -> list[subprocess.Popen]:
  """``processes`` copies of ``command`` (with the distributed flags appended when more than one)."""
  port = free_port()
  procs = []
  for i in range(processes):
    extra = [f"localhost:{port}", str(processes), str(i)] if processes > 1 else []
    if command[1:2] == ["-m"]:  # the CLI takes flags
      extra = (["--coordinator", f"localhost:{port}", "--num-processes", str(processes), "--process-id", str(i)]
               if processes > 1 else [])
    log = open(f"{logs}.{i}.log", "w")
    procs.append(subprocess.Popen(command + extra, cwd=ROOT, env=env(cpu_devices, cache), stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def wait_all(procs, logs: str) -> None:
  for i, p in enumerate(procs):
    try:
      rc = p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    with open(f"{logs}.{i}.log") as f:
      assert rc == 0, f"process {i} exited with {rc}:\n{f.read()[-3000:]}"


def worker(kind: str, out: str, processes: int, cpu_devices: int, num_devices: int, mesh_members: int,
           cache: str) -> list[subprocess.Popen]:
  os.makedirs(out, exist_ok=True)
  return launch([sys.executable, WORKER, kind, out, str(num_devices), str(mesh_members)], processes, cpu_devices,
                cache, os.path.join(out, "log"))


def run_worker(*args) -> str:
  procs = worker(*args)
  wait_all(procs, os.path.join(args[1], "log"))
  return args[1]


def records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def check_written_once(workdir: str, members: int, logged_steps: int) -> None:
  lines = records(workdir)
  keys = [(r["group"], r["label"], r["seed"], r["step"]) for r in lines]
  assert len(keys) == len(set(keys)), "metrics.jsonl has duplicate lines"
  assert len(lines) == members * logged_steps


def losses(workdir: str) -> dict:
  return {(r["label"], r["seed"], r["step"]): r["train_loss"] for r in records(workdir)}


def compare(a: str, b: str, c: float) -> None:
  pa, pb = np.load(os.path.join(a, "params.npz")), np.load(os.path.join(b, "params.npz"))
  assert sorted(pa.files) == sorted(pb.files) and pa.files
  for key in pa.files:
    # c eps32 of the array's scale: c = 100 is ~1e-5 relative to its largest entry.
    assert_close_scaled(pa[key], pb[key], c=c, err_msg=key)
  la, lb = losses(os.path.join(a, "work")), losses(os.path.join(b, "work"))
  assert la.keys() == lb.keys()
  assert_close_scaled(np.array([la[k] for k in sorted(la)]), np.array([lb[k] for k in sorted(la)]), c=c)


# ------------------------------------------------------------------------------------------ flags (no processes)

def _args(**kw):
  base = dict(coordinator=None, num_processes=None, process_id=None, distributed=None)
  return types.SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("flags, message", [
    (dict(coordinator="localhost:1234"), "^--coordinator needs --num-processes, --process-id as well"),
    (dict(num_processes=2, process_id=0), "^--num-processes, --process-id needs --coordinator as well"),
    (dict(coordinator="localhost", num_processes=2, process_id=0),
     r"^--coordinator must be HOST:PORT with a port in 1\.\.65535, got 'localhost'\.$"),
    (dict(coordinator="localhost:99999", num_processes=2, process_id=0), "^--coordinator must be HOST:PORT"),
    (dict(coordinator="h:1", num_processes=0, process_id=0), r"^--num-processes must be >= 1, got 0\.$"),
    (dict(coordinator="h:1", num_processes=2, process_id=2),
     r"^--process-id must be between 0 and 1 \(--num-processes 2\), got 2\.$"),
    (dict(distributed="auto", process_id=1), "^--distributed auto detects the cluster itself; drop --process-id"),
])
def test_bad_flags_name_the_flag(flags, message):
  with pytest.raises(ValueError, match=message):
    distributed.settings(_args(**flags))


def test_flags_to_initialize_arguments():
  assert distributed.settings(_args()) is None
  assert distributed.settings(_args(distributed="auto")) == {}
  assert distributed.settings(_args(coordinator="10.0.0.1:8476", num_processes=4, process_id=3)) == {
      "coordinator_address": "10.0.0.1:8476", "num_processes": 4, "process_id": 3}


def test_cli_bad_flags_are_one_error_line(capsys):
  from experiments.cli import main
  assert main(["early_decay", "--quick", "--coordinator", "localhost:1", "--process-id", "0"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: --coordinator, --process-id needs --num-processes as well: a multi-process run takes "
                 "--coordinator HOST:PORT --num-processes N --process-id I (or --distributed auto)."]
  assert main(["early_decay", "--distributed", "slurm"]) == 2
  assert "argument --distributed: invalid choice: 'slurm'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, expected", [
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "1"],
     {"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}),
    (["--distributed", "auto"], {}),
])
def test_cli_initializes_before_the_up_front_checks(monkeypatch, flags, expected):
  """The call path: the flags reach jax.distributed.initialize (gloo on CPU) before anything counts devices."""
  import jax
  from jax._src import xla_bridge
  from experiments import checks
  from experiments.cli import main
  calls = []
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)  # as in a fresh process
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(("initialize", kw)))
  monkeypatch.delenv("JAX_CPU_COLLECTIVES_IMPLEMENTATION", raising=False)
  previous = jax.config.jax_cpu_collectives_implementation

  class Stop(Exception):
    pass

  def check_study(*a, **kw):
    calls.append(("check_study", None))
    raise Stop
  monkeypatch.setattr(checks, "check_study", check_study)
  try:
    with pytest.raises(Stop):
      main(["early_decay", "--quick", *flags])
    assert jax.config.jax_cpu_collectives_implementation == "gloo"
  finally:
    jax.config.update("jax_cpu_collectives_implementation", previous)
  assert calls == [("initialize", expected), ("check_study", None)]


def test_slurm_environment_as_the_docs_describe_it(monkeypatch):
  """docs/accelerators.md's SLURM recipe relies on what jax's own detection reads from srun's environment."""
  from jax._src import clusters
  for key in list(os.environ):
    if key.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_")):
      monkeypatch.delenv(key)
  monkeypatch.setenv("SLURM_JOB_ID", "4097")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[007-010]")
  monkeypatch.setenv("SLURM_NTASKS", "32")
  monkeypatch.setenv("SLURM_PROCID", "13")
  monkeypatch.setenv("SLURM_LOCALID", "5")
  monkeypatch.setenv("SLURM_STEP_NUM_NODES", "4")
  address, count, index, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, None, None, 10)
  assert (address, count, index, local) == (f"gpu007:{4097 % 4096 + 61440}", 32, 13, [5])


def test_initialize_refuses_after_devices_were_touched(monkeypatch):
  from jax._src import xla_bridge
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  with pytest.raises(RuntimeError, match="^jax.distributed must start before jax initialises its devices"):
    distributed.initialize({})


# ------------------------------------------------------------------------------------------ multi-process runs

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The plain population: 2 processes x 4 devices, 1 x 8 (mesh 2 x 4 both) and 1 x 1 device."""
  root = tmp_path_factory.mktemp("multiprocess")
  cache = str(root / "jax_cache")
  return {
      "two": run_worker("plain", str(root / "two"), 2, 4, 0, 2, cache),
      "eight": run_worker("plain", str(root / "eight"), 1, 8, 0, 2, cache),
      "one": run_worker("plain", str(root / "one"), 1, 1, 1, 0, cache),
      "root": root, "cache": cache,
  }


def gathered(out: str, process: int) -> list:
  with open(os.path.join(out, f"feed.{process}.json")) as f:
    return json.load(f)["gathered"]


def test_two_processes_match_one_process_and_one_device(runs):
  # Another compiled program (gloo / in-process reductions over 4 devices, 20 steps; host-fed batches on
  # two processes, drawn on device on one): round-off only.
  compare(runs["two"], runs["eight"], c=100)
  compare(runs["two"], runs["one"], c=100)
  for name in ("two", "eight", "one"):
    check_written_once(os.path.join(runs[name], "work"), members=4, logged_steps=2)
  # train.feed=auto: host-fed on two processes, each gathering only its share of every chunk (10 steps):
  # its 2 of the 4 members (a row of the 2 x 4 mesh) x a quarter of the 32-example batch per device, never
  # the whole (10, 4, 32); on one process the batches are drawn on device and nothing is gathered.
  for process in (0, 1):
    assert gathered(runs["two"], process) == [[10, 2, 8]] * 4 * 2
  assert gathered(runs["eight"], 0) == [] and gathered(runs["one"], 0) == []


def test_killed_process_resumes_bit_identical(runs):
  out = str(runs["root"] / "killed")
  procs = worker("plain", out, 2, 4, 0, 2, runs["cache"])
  first = os.path.join(out, "work", "checkpoints", "sgd", "10")
  deadline = time.time() + TIMEOUT
  while not os.path.isdir(first) and time.time() < deadline and all(p.poll() is None for p in procs):
    time.sleep(0.05)
  alive = procs[1].poll() is None
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  try:  # the survivor blocks in a collective (or gets an error from gloo); a scheduler tears it down
    procs[0].wait(timeout=5)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    procs[0].wait()
  assert os.path.isdir(first) and alive, "process 1 finished or failed before its first checkpoint"
  assert not os.path.exists(os.path.join(out, "params.npz"))
  run_worker("plain", out, 2, 4, 0, 2, runs["cache"])  # the same command again
  with open(os.path.join(out, "log.0.log")) as f:
    assert "[sgd] resuming from the checkpoint at step 10" in f.read()
  pa, pb = np.load(os.path.join(out, "params.npz")), np.load(os.path.join(runs["two"], "params.npz"))
  assert sorted(pa.files) == sorted(pb.files)
  for key in pa.files:
    np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)
  assert records(os.path.join(out, "work")) == records(os.path.join(runs["two"], "work"))
  check_written_once(os.path.join(out, "work"), members=4, logged_steps=2)


@pytest.mark.slow
def test_kfac_population_two_processes_match_one_device(tmp_path):
  """Covered without K-FAC by the test above; here the K-FAC arm's curvature under the 2-process mesh."""
  cache = str(tmp_path / "jax_cache")
  two = run_worker("kfac", str(tmp_path / "two"), 2, 4, 0, 2, cache)
  one = run_worker("kfac", str(tmp_path / "one"), 1, 1, 1, 0, cache)
  compare(two, one, c=100)
  check_written_once(os.path.join(two, "work"), members=4, logged_steps=2)


@pytest.mark.slow
def test_cli_two_processes_end_to_end(tmp_path):
  """``python -m experiments STUDY --coordinator ... --num-processes 2 --process-id I``: metrics, plots and
  REPORT.md written once, by process 0 (flags and the initialize path are covered by the fast tests)."""
  workdir = str(tmp_path / "work")
  command = [sys.executable, "-m", "experiments", "early_decay", "--quick", "--seeds", "1", "--no-progress",
             "--workdir", workdir, "--set", "data.n_train=256", "--set", "data.n_test=64",
             "--set", 'model.kwargs={"hidden": [16]}', "--set", "train.steps=10", "--set", "train.log_every=5",
             "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10", "--set", "train.batch_size=32",
             "--set", "train.eval_batch_size=64", "--set", "train.num_devices=0"]
  procs = launch(command, 2, 4, str(tmp_path / "cache"), str(tmp_path / "cli"))
  wait_all(procs, str(tmp_path / "cli"))
  check_written_once(workdir, members=5, logged_steps=2)
  assert os.path.exists(os.path.join(workdir, "REPORT.md"))
  with open(tmp_path / "cli.0.log") as f0, open(tmp_path / "cli.1.log") as f1:
    assert "wrote " in f0.read() and "wrote " not in f1.read()
