"""A run killed with SIGKILL and restarted resumes from its last checkpoint and ends bitwise where an
uninterrupted run ends. Both runs are real ``python -m experiments`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments.train import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 80
OVERRIDES = [
    "data.name=digits", "data.n_train=256", "data.n_test=64", "model.kwargs={\"hidden\": [16]}",
    f"train.steps={STEPS}", "train.batch_size=32", "train.log_every=10", "train.eval_every=40",
    "train.checkpoint_every=10", "train.num_devices=1",
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
  env.pop("XLA_FLAGS", None)  # one CPU device, like a user's run
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
