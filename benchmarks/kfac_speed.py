"""K-FAC step and compile time: wd_optax.kfac against kfac-jax 0.0.8 and against wd_optax.sgd.

On the same MLP and small CNN (``benchmarks/kfac_models.py``), with the true Fisher (sampled targets),
fixed learning rate 1e-3, momentum 0.9, damping 1e-3 and the same inverse period (20), for two factor
periods, each the same on both sides: statistics every step (``curvature_every=1``, both libraries'
default) and every 10 steps (Zhang et al.'s setting; kfac-jax ``curvature_update_period=10``, ours
``value_grad_and_curvature(estimate=step % 10 == 0)`` inside the one jitted step), this times

* ours: ``wd_optax.kfac.value_grad_and_curvature(mode="fisher")`` + ``kfac.kfac`` inside one jitted,
  donated step (``nnx.split`` once, pure step function);
* kfac-jax: ``kfac_jax.Optimizer.step`` in kfac-jax's own environment (jax 0.9.1), driven as a subprocess
  (``benchmarks/kfac_jax_worker.py``) so that both run in this one invocation;
* SGD: ``wd_optax.sgd`` (momentum 0.9) on the same nnx model, same step structure.

Repeats are interleaved (ours, SGD, kfac-jax, then rotated), with a 1 s pause before each block so that
spinning XLA threads of the previous side do not bleed into the next; each block times ``--steps`` steps (a
multiple of the inverse period, so inverse updates are amortised as in training); medians are reported.
Compile time is ``init + warm-up − warm-up steps × median step``, with a warm-up of ``inverse_every + 1``
steps for every side (kfac-jax compiles separate steps with and without the inverse update).

Targets: ours / kfac-jax <= 0.5 for step time and compile time; K-FAC / SGD step time <= 2.
``sgd_over_kfac_jax_step`` is the floor of ours / kfac-jax: SGD's step on the same model over kfac-jax's.

If kfac-jax's environment is missing (``--kfac-jax-python``, default ``/work/.venv-kfacjax/bin/python``) the
kfac-jax columns are null and ``note`` says why; our numbers are still measured.

Usage: python benchmarks/kfac_speed.py [--reps 5] [--steps 20] [--full] [--curvature-every 1 10]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import kfac_models  # noqa: E402
import wd_optax  # noqa: E402
from wd_optax import kfac  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PAUSE_S = 1.0
HYPER = {"learning_rate": 1e-3, "momentum": 0.9, "damping": 1e-3, "inverse_every": 20}


def configs(full: bool) -> dict[str, dict]:
  if full:
    return {"mlp": {"model": "mlp", "sizes": [784, 512, 512, 10], "batch": 512},
            "cnn": {"model": "cnn", "image": [32, 32, 3], "channels": [32, 64], "classes": 10, "batch": 128}}
  return {"mlp": {"model": "mlp", "sizes": [128, 256, 256, 10], "batch": 256},
          "cnn": {"model": "cnn", "image": [16, 16, 3], "channels": [16, 32], "classes": 10, "batch": 64}}


class Net(nnx.Module):
  """The config's model with registered K-FAC layers, initialised from the same numpy parameters."""

  def __init__(self, config: dict):
    self.config = config
    layers, strides = [], [1, 2]
    for i, ((kind, shape), values) in enumerate(zip(kfac_models.layer_shapes(config),
                                                    kfac_models.init_params(config))):
      if kind == "conv":
        layer = kfac.Conv(shape[2], shape[3], kernel_size=shape[:2], strides=strides[i], padding="SAME",
                          rngs=nnx.Rngs(i))
      else:
        layer = kfac.Linear(shape[0], shape[1], rngs=nnx.Rngs(i))
      layer.kernel[...] = jnp.asarray(values["kernel"])
      layers.append(layer)
    self.layers = nnx.List(layers)

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      if isinstance(layer, kfac.Linear) and x.ndim == 4:
        x = jnp.mean(x, axis=(1, 2))
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x


def loss_fn(model, batch):
  x, y = batch
  logits = model(x)
  return kfac_models.cross_entropy(logits, y), logits


def make_stepper(config: dict, use_kfac: bool, curvature_every: int = 1):
  """Returns (optimizer init seconds, run(n) -> seconds for n steps)."""
  # The model is built outside the timer: kfac-jax's worker gets its parameters from numpy, so only the
  # optimizer's initialisation is comparable (ours runs eagerly through nnx.Optimizer).
  model = Net(config)
  jax.block_until_ready(nnx.state(model))
  start = time.perf_counter()
  if use_kfac:
    tx = kfac.kfac(HYPER["learning_rate"], damping=HYPER["damping"], momentum=HYPER["momentum"],
                   inverse_every=HYPER["inverse_every"])
  else:
    tx = wd_optax.sgd(HYPER["learning_rate"], momentum=HYPER["momentum"])
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  batch = tuple(jnp.asarray(v) for v in kfac_models.make_batch(config))

  # The batch is an argument, not a closed-over constant: XLA would otherwise constant-fold the input
  # factor of the first layer at compile time.
  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, batch, key):
    model, optimizer = nnx.merge(graphdef, state)
    if use_kfac:
      estimate = True if curvature_every == 1 else optimizer.step[...] % curvature_every == 0
      (loss, _), grads, curvature = kfac.value_grad_and_curvature(loss_fn, model, batch, mode="fisher", key=key,
                                                                  estimate=estimate)
      optimizer.update(model, grads, curvature=curvature)
    else:
      (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
      optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  holder = {"state": state, "step": 0}
  root = jax.random.key(0)

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      holder["state"], loss = step(holder["state"], batch, jax.random.fold_in(root, holder["step"]))
      holder["step"] += 1
    jax.block_until_ready(loss)
    return time.perf_counter() - start

  return init_s, run


class KfacJax:
  """The kfac-jax worker subprocess."""

  def __init__(self, python: str, config: dict, curvature_every: int):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    self.process = subprocess.Popen(
        [python, os.path.join(HERE, "kfac_jax_worker.py"), json.dumps({**config, **HYPER, "curvature_every": curvature_every})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.header = self._read()

  def _read(self) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"kfac-jax worker exited with code {self.process.wait()}")
    return json.loads(line)

  def run(self, n: int) -> float:
    self.process.stdin.write(f"{n}\n")
    self.process.stdin.flush()
    return self._read()["seconds"]

  def close(self) -> None:
    self.process.stdin.write("\n")
    self.process.stdin.flush()
    self.process.wait(timeout=60)


def compile_seconds(init_s: float, warmup_s: float, warmup_steps: int, step_s: float) -> float:
  return init_s + warmup_s - warmup_steps * step_s


def bench(config: dict, curvature_every: int, reps: int, steps: int, kfac_jax_python: str | None) -> dict:
  warmup_steps = HYPER["inverse_every"] + 1
  sides = {}
  for name, use_kfac in (("ours", True), ("sgd", False)):
    init_s, run = make_stepper(config, use_kfac, curvature_every)
    sides[name] = {"init_s": init_s, "warmup_s": run(warmup_steps), "run": run, "times": []}
  worker = None
  if kfac_jax_python:
    worker = KfacJax(kfac_jax_python, config, curvature_every)
    sides["kfac_jax"] = {"init_s": worker.header["init_s"], "warmup_s": worker.header["warmup_s"],
                         "run": worker.run, "times": []}
  names = list(sides)
  for rep in range(reps):
    # Rotate the order, and pause between sides: the XLA CPU threads of the side that just ran (in this
    # process or the worker's) keep spinning for a moment and would slow whichever side runs next.
    for name in names[rep % len(names):] + names[:rep % len(names)]:
      time.sleep(PAUSE_S)
      sides[name]["times"].append(sides[name]["run"](steps) / steps)
  if worker is not None:
    worker.close()
  result = {}
  for name, side in sides.items():
    step_s = statistics.median(side["times"])
    result[f"{name}_step_ms"] = 1e3 * step_s
    if name != "sgd":
      result[f"{name}_compile_s"] = compile_seconds(side["init_s"], side["warmup_s"], warmup_steps, step_s)
      result[f"{name}_init_s"] = side["init_s"]
  result["kfac_over_sgd_step"] = result["ours_step_ms"] / result["sgd_step_ms"]
  if worker is not None:
    result["ours_over_kfac_jax_step"] = result["ours_step_ms"] / result["kfac_jax_step_ms"]
    result["ours_over_kfac_jax_compile"] = result["ours_compile_s"] / result["kfac_jax_compile_s"]
    # What a K-FAC that cost nothing beyond SGD would score: the ratio ours/kfac-jax cannot go below this.
    result["sgd_over_kfac_jax_step"] = result["sgd_step_ms"] / result["kfac_jax_step_ms"]
    result["kfac_jax_versions"] = worker.header["versions"]
  result["config"] = config
  result["curvature_every"] = curvature_every
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--steps", type=int, default=HYPER["inverse_every"])
  parser.add_argument("--full", action="store_true", help="larger models (784-512-512-10 MLP, 32x32 CNN)")
  parser.add_argument("--kfac-jax-python", default="/work/.venv-kfacjax/bin/python")
  parser.add_argument("--curvature-every", type=int, nargs="+", default=[1, 10],
                      help="factor periods to time (each on both sides)")
  args = parser.parse_args()
  python = args.kfac_jax_python if os.path.exists(args.kfac_jax_python) else None
  note = None if python else (
      f"kfac-jax environment not found at {args.kfac_jax_python}: only our numbers and SGD are measured. "
      "Create it with the command in tools/kfac_jax_reference.py's docstring.")
  results = {f"{name}/curvature_every={every}": bench(config, every, args.reps, args.steps, python)
             for every in args.curvature_every for name, config in configs(args.full).items()}
  targets = {"ours_over_kfac_jax_step": 0.5, "ours_over_kfac_jax_compile": 0.5, "kfac_over_sgd_step": 2.0}
  met = {f"{model}/{key}": results[model][key] <= bound
         for model in results for key, bound in targets.items() if key in results[model]}
  print(json.dumps({
      "benchmark": "kfac_speed", "results": results, "targets": targets, "targets_met": met,
      "inverse_every": HYPER["inverse_every"], "reps": args.reps, "steps_per_rep": args.steps,
      "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "note": note,
  }, indent=2))


if __name__ == "__main__":
  main()
