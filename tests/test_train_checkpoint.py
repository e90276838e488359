"""A run killed with SIGKILL and restarted resumes from its last checkpoint and ends bitwise where an
uninterrupted run ends (both real ``python -m experiments`` processes). A restart whose latest checkpoint
cannot be read back moves it aside, says so on one line and resumes from the previous one, or starts afresh
when none is readable; these runs share one in-process :class:`Program` (one compile)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.train import MetricsWriter, Program, make_groups, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 80
OVERRIDES = [
    "data.name=digits", "data.n_train=256", "data.n_test=64", "model.kwargs={\"hidden\": [16]}",
    f"train.steps={STEPS}", "train.batch_size=32", "train.log_every=10", "train.eval_every=40",
    "train.checkpoint_every=10", "train.num_devices=1", "train.population=vmap",  # checkpoints/<group>/
]


def command(workdir: str) -> list[str]:
  args = [sys.executable, "-m", "experiments", "early_decay", "--quick", "--seeds", "2", "--workdir", workdir,
          "--no-progress"]
  for o in OVERRIDES:
    args += ["--set", o]
  return args


def environment(cache: str) -> dict:
  env = dict(os.environ, WD_OPTAX_JAX_CACHE=cache, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  # One CPU device, like a user's run; the suite's other XLA flags (tests/conftest.py) stay.
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def final_params(workdir: str) -> dict:
  group_dir = os.path.join(workdir, "checkpoints")
  (group,) = os.listdir(group_dir)
  path = os.path.join(group_dir, group, str(STEPS), "default")
  state = ocp.StandardCheckpointer().restore(path)
  return state["params"]


def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path):
  cache = str(tmp_path / "jax_cache")
  env = environment(cache)
  reference_dir, killed_dir = str(tmp_path / "reference"), str(tmp_path / "killed")

  done = subprocess.run(command(reference_dir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]

  victim = subprocess.Popen(command(killed_dir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  checkpoints = os.path.join(killed_dir, "checkpoints")
  deadline = time.time() + 240
  killed_at = None
  while time.time() < deadline and victim.poll() is None:
    if os.path.isdir(checkpoints):
      steps = [int(d) for g in os.listdir(checkpoints) for d in os.listdir(os.path.join(checkpoints, g))
               if d.isdigit()]
      if steps:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = max(steps)
        break
    time.sleep(0.02)
  assert killed_at is not None, "the run finished or stalled before its first checkpoint"
  assert victim.returncode == -signal.SIGKILL
  assert killed_at < STEPS

  resumed = subprocess.run(command(killed_dir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from the checkpoint at step" in resumed.stdout

  reference, restarted = final_params(reference_dir), final_params(killed_dir)
  leaves_ref = jax.tree_util.tree_flatten_with_path(reference)[0]
  leaves_new = dict(jax.tree_util.tree_flatten_with_path(restarted)[0])
  assert len(leaves_ref) == len(leaves_new) > 0
  for path, value in leaves_ref:
    np.testing.assert_array_equal(np.asarray(value), np.asarray(leaves_new[path]),
                                  err_msg=jax.tree_util.keystr(path))

  # The metrics file of the resumed run has each (member, step) once, like the reference's.
  def keys(workdir):
    return sorted((r["label"], r["seed"], r["step"]) for r in read_records(os.path.join(workdir, "metrics.jsonl")))
  assert keys(killed_dir) == keys(reference_dir)
  with open(os.path.join(killed_dir, "REPORT.md")) as f:
    assert "B1a" in f.read()


# --- unreadable checkpoints (in process: one Program, reset between runs like a fresh process) ---------------

STOP = 50  # the "killed" run stops here; with max_to_keep=2 the checkpoints of steps 40 and 50 are kept


@pytest.fixture(scope="module")
def population(tmp_path_factory):
  """One compiled Program of the CLI test's config and the records and parameters of an uninterrupted run."""
  from experiments import checks, studies
  from experiments.train.workdir import load_dataset
  config = checks.study_config(studies.get("early_decay"), quick=True, seeds=2, overrides=OVERRIDES)
  (group,) = make_groups(config)
  program = Program(config, group, load_dataset(config))
  workdir = str(tmp_path_factory.mktemp("reference"))
  train(program, workdir, checkpoints=False)
  return program, {"params": jax.device_get(program.state["params"]),
                   "records": read_records(os.path.join(workdir, "metrics.jsonl"))}


def train(program: Program, workdir: str, *, checkpoints: bool = True, **kwargs) -> None:
  """One run of ``workdir`` as a new process would do it: fresh initial state, same metrics file."""
  program.reset(program.group.members)
  program.train(workdir=workdir if checkpoints else None, progress=False,
                writer=MetricsWriter(os.path.join(workdir, "metrics.jsonl")), **kwargs)


def truncate_largest_file(step_dir: str) -> tuple[str, int]:
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names]
  largest = max(files, key=os.path.getsize)
  size = os.path.getsize(largest) // 2
  with open(largest, "r+b") as f:
    f.truncate(size)
  return os.path.relpath(largest, step_dir), size


def assert_same_run(program: Program, workdir: str, reference: dict) -> None:
  params = jax.device_get(program.state["params"])
  leaves_ref = jax.tree_util.tree_flatten_with_path(reference["params"])[0]
  leaves_new = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  assert len(leaves_ref) == len(leaves_new) > 0
  for path, value in leaves_ref:
    np.testing.assert_array_equal(value, leaves_new[path], err_msg=jax.tree_util.keystr(path))
  # Every logged metric of every (member, step), once and bit for bit (floats round-trip through JSON).
  assert read_records(os.path.join(workdir, "metrics.jsonl")) == reference["records"]


def orbax_steps(ckpt_dir: str) -> list[int]:
  with ocp.CheckpointManager(ckpt_dir) as manager:
    return sorted(manager.all_steps())


def test_corrupt_latest_checkpoint_resumes_from_the_previous_one(tmp_path, population, capfd):
  program, reference = population
  workdir = str(tmp_path / "run")
  train(program, workdir, stop_after=STOP)
  ckpt_dir = os.path.join(workdir, "checkpoints", program.group.name)
  assert orbax_steps(ckpt_dir) == [STOP - 10, STOP]
  # Killed while saving step 60: orbax's unfinished temporary directory, which must not be taken as a step.
  partial = os.path.join(ckpt_dir, f"{STOP + 10}.orbax-checkpoint-tmp")
  shutil.copytree(os.path.join(ckpt_dir, str(STOP - 10)), partial)
  truncate_largest_file(partial)
  latest = os.path.join(ckpt_dir, str(STOP))
  cut, size = truncate_largest_file(latest)
  capfd.readouterr()

  lines = []
  train(program, workdir, log=lines.append)

  assert_same_run(program, workdir, reference)
  moved = os.path.join(ckpt_dir, "corrupt", str(STOP))
  assert len(lines) == 2, lines
  warning, resumed = lines
  assert warning.startswith(f"[{program.group.name}] warning: cannot restore the checkpoint {latest} (")
  assert warning.endswith(f"); moved it to {moved}")
  assert "\n" not in warning and len(warning) < len(latest) + len(moved) + 320, warning
  assert resumed == f"[{program.group.name}] resuming from the checkpoint at step {STOP - 10}"
  # Moved aside, not deleted, and out of orbax's sight: max_to_keep=2 collected 40 and the new 50/60 but
  # not it, and the next save of step 60 replaced the unfinished temporary directory.
  assert os.path.getsize(os.path.join(moved, cut)) == size
  assert not os.path.exists(latest + ".orbax-checkpoint-tmp") and not os.path.exists(partial)
  assert orbax_steps(ckpt_dir) == [STEPS - 10, STEPS]
  assert sorted(os.listdir(ckpt_dir)) == sorted([str(STEPS - 10), str(STEPS), "corrupt"])
  assert "TensorStore" not in capfd.readouterr().err  # no traceback either


def test_no_readable_checkpoint_starts_afresh(tmp_path, population):
  program, reference = population
  workdir = str(tmp_path / "run")
  train(program, workdir, stop_after=STOP)
  ckpt_dir = os.path.join(workdir, "checkpoints", program.group.name)
  truncate_largest_file(os.path.join(ckpt_dir, str(STOP)))
  with open(os.path.join(ckpt_dir, str(STOP - 10), "default", "_METADATA"), "r+b") as f:
    f.truncate(100)  # another way to break one: its tree metadata is no longer JSON
  os.makedirs(os.path.join(ckpt_dir, "corrupt", str(STOP)))  # step 50 went bad once before

  lines = []
  train(program, workdir, log=lines.append)

  assert_same_run(program, workdir, reference)
  prefix = f"[{program.group.name}] warning: cannot restore the checkpoint"
  assert [line.split(" (")[0] for line in lines[:2]] == [
      f"{prefix} {os.path.join(ckpt_dir, str(STOP))}", f"{prefix} {os.path.join(ckpt_dir, str(STOP - 10))}"]
  assert lines[0].endswith(f"moved it to {os.path.join(ckpt_dir, 'corrupt', f'{STOP}.2')}")
  assert "JSONDecodeError" in lines[1]
  assert lines[1].endswith(f"moved it to {os.path.join(ckpt_dir, 'corrupt', str(STOP - 10))}")
  assert lines[2:] == [f"[{program.group.name}] no readable checkpoint left in {ckpt_dir}; starting from step 0"]
  assert sorted(os.listdir(os.path.join(ckpt_dir, "corrupt"))) == sorted([str(STOP), f"{STOP}.2", str(STOP - 10)])
