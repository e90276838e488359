"""K-FAC step time against its flop floor, against kfac-jax 0.0.8 and against SGD, each ratio paired.

On an MLP 128-w-w-10 (batch 256) at w = 256 and w = 1024 (the latter with the opt-in batch-space
preconditioner) and a small CNN (``benchmarks/kfac_models.py``), with the true Fisher (sampled targets),
learning rate 1e-3, momentum 0.9, damping 1e-3, inverses every 20 steps, for two factor periods, the same
on both libraries: statistics every step and every 10 steps (Zhang et al.'s setting; kfac-jax
``curvature_update_period=10``, ours ``kfac.curvature_every(step, 10, programs="two")``, also timed against
``programs="cond"``), this measures

* ours: ``value_grad_and_curvature(mode="fisher")`` + ``kfac.kfac`` in a jitted, donated pure step;
* SGD: ``wd_optax.sgd`` (momentum 0.9) on the same nnx model, same step structure;
* kfac-jax: ``kfac_jax.Optimizer.step`` and a plain jitted jax SGD step in kfac-jax's own environment
  (jax 0.9.1), driven as a subprocess (``benchmarks/kfac_jax_worker.py``).

The flop floor is FLOPs(average K-FAC step over an inverse period) / FLOPs(SGD step), from XLA's cost
analysis of the compiled steps (see :func:`flop_floor`). Every ratio comes from ``_paired.compare``: paired,
interleaved samples of one inverse period (20 steps) each, geometric mean and 95% t interval.

Targets (``targets`` in the output, each with ``ratio_ci95``, ``meets_target`` and ``decided``):
(K-FAC step / SGD step) / floor <= 1.25 on every model and period; ours / kfac-jax step <= 0.5 on the CNN
(reported without a target on the MLP, next to both libraries' K-FAC / own-SGD ratios). Compile times
(``init + warm-up - warm-up steps x step``) are single measurements, reported without a target.

If kfac-jax's environment is missing (``--kfac-jax-python``; default the first of
``/work/.venv-kfacjax/bin/python`` and ``/tmp/kfacjax-venv/bin/python`` that exists) the kfac-jax side is
skipped and ``note`` says so; our numbers are still measured.

Usage: python benchmarks/kfac_speed.py [--min-repeats 7] [--max-repeats 21] [--full] [--curvature-every 1 10]
  [--only mlp_w256 mlp_w1024 cnn]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import _paired  # noqa: E402
import kfac_models  # noqa: E402
import wd_optax  # noqa: E402
from wd_optax import kfac  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_OVER_FLOOR = 1.25       # (K-FAC step / SGD step) / (K-FAC flops / SGD flops)
TARGET_OVER_KFAC_JAX = 0.5     # ours / kfac-jax step, where ours is above its floor (the CNN)
DEFAULT_KFAC_JAX_PYTHON = next((p for p in ("/work/.venv-kfacjax/bin/python", "/tmp/kfacjax-venv/bin/python")
                                if os.path.exists(p)), "/work/.venv-kfacjax/bin/python")
HYPER = {"learning_rate": 1e-3, "momentum": 0.9, "damping": 1e-3, "inverse_every": 20}


def configs(full: bool) -> dict[str, dict]:
  if full:
    return {"mlp": {"model": "mlp", "sizes": [784, 512, 512, 10], "batch": 512},
            "cnn": {"model": "cnn", "image": [32, 32, 3], "channels": [32, 64], "classes": 10, "batch": 128}}
  # batch_space: the opt-in batch-space preconditioner, on where a layer is wider than 1.5 x batch.
  return {"mlp_w256": {"model": "mlp", "sizes": [128, 256, 256, 10], "batch": 256},
          "mlp_w1024": {"model": "mlp", "sizes": [128, 1024, 1024, 10], "batch": 256, "batch_space": True},
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


def make_stepper(config: dict, use_kfac: bool, curvature_every: int = 1, programs: str = "cond"):
  """Returns (optimizer init seconds, run(n) -> seconds for n steps, flops(estimate) per step from XLA)."""
  # The model is built outside the timer: kfac-jax's worker gets its parameters from numpy, so only the
  # optimizer's initialisation is comparable (ours runs eagerly through nnx.Optimizer).
  model = Net(config)
  jax.block_until_ready(nnx.state(model))
  batch_space = bool(config.get("batch_space", False))
  start = time.perf_counter()
  if use_kfac:
    tx = kfac.kfac(HYPER["learning_rate"], damping=HYPER["damping"], momentum=HYPER["momentum"],
                   inverse_every=HYPER["inverse_every"], batch_space=batch_space)
  else:
    tx = wd_optax.sgd(HYPER["learning_rate"], momentum=HYPER["momentum"])
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  batch = tuple(jnp.asarray(v) for v in kfac_models.make_batch(config))

  # The batch is an argument, not a closed-over constant: XLA would otherwise constant-fold the input
  # factor of the first layer at compile time.
  def step_fn(state, batch, key, *, estimate=True):
    model, optimizer = nnx.merge(graphdef, state)
    if use_kfac:
      (loss, _), grads, curvature = kfac.value_grad_and_curvature(loss_fn, model, batch, mode="fisher", key=key,
                                                                  estimate=estimate, rows=batch_space)
      optimizer.update(model, grads, curvature=curvature)
    else:
      (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
      optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  step = kfac.curvature_every(step_fn, curvature_every if use_kfac else 1, programs=programs,
                              donate_argnums=0)
  holder = {"state": state, "step": 0}
  root = jax.random.key(0)

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      holder["state"], loss = step(holder["step"], holder["state"], batch, jax.random.fold_in(root, holder["step"]))
      holder["step"] += 1
    jax.block_until_ready(loss)
    return time.perf_counter() - start

  # Shapes only: the arrays themselves are donated to the first step.
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))

  def flops(estimate: bool) -> float:
    compiled = jax.jit(functools.partial(step_fn, estimate=estimate)).lower(*shapes, root).compile()
    return _flops(compiled)

  kfac_state = optimizer.opt_state[0] if use_kfac else None
  factors = None if kfac_state is None else jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), kfac_state.factors,
      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return init_s, run, flops, factors


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


def inverse_flops(factors) -> float:
  """XLA's count for one inverse update (its ``lax.cond`` branch): the batched damped inverses of the factors."""
  from wd_optax.kfac import _preconditioner  # the batched inverses exactly as the step runs them
  fn = lambda f: _preconditioner._all_damped_inverses(f, {l: jnp.float32(1e-3) for l in f}, True, "cholesky")
  return _flops(jax.jit(fn).lower(factors).compile())


def flop_floor(kfac_flops, sgd_flops: float, inverse: float, every: int) -> dict:
  """FLOPs of the average K-FAC step over a period, over SGD's, from XLA's cost analysis.

  XLA counts a ``lax.cond`` as its costliest branch, so the programs counted have a static ``estimate``, and
  the inverse branch (counted in every one of them) is taken out and put back once per ``inverse_every``
  steps. LAPACK calls (Cholesky, triangular solve) are custom calls XLA counts as 0 flops: they are left out
  of the floor, which makes it lower (the target harder), not higher.
  """
  with_stats, without = kfac_flops(True), (kfac_flops(False) if every > 1 else None)
  per_step = (with_stats + (every - 1) * (without or 0.0)) / every - inverse + inverse / HYPER["inverse_every"]
  return {"kfac_flops_per_step": per_step, "sgd_flops_per_step": sgd_flops, "inverse_flops": inverse,
          "kfac_flops_with_statistics": with_stats, "kfac_flops_without_statistics": without,
          "flop_floor": per_step / sgd_flops}


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

  def run(self, n: int, sgd: bool = False) -> float:
    self.process.stdin.write(f"sgd {n}\n" if sgd else f"{n}\n")
    self.process.stdin.flush()
    return self._read()["seconds"]

  def close(self) -> None:
    self.process.stdin.write("\n")
    self.process.stdin.flush()
    self.process.wait(timeout=60)


def compile_seconds(init_s: float, warmup_s: float, warmup_steps: int, step_s: float) -> float:
  return init_s + warmup_s - warmup_steps * step_s


def bench(name: str, config: dict, every: int, args, kfac_jax_python: str | None) -> tuple[dict, list]:
  """One model and factor period: paired ratios, the flop floor, and the targets."""
  steps = HYPER["inverse_every"]            # a unit of work: one inverse period, a multiple of every
  warmup_steps = HYPER["inverse_every"] + 1
  programs = ["cond"] if every == 1 else ["two", "cond"]
  sides = {}
  for label, use_kfac, prog in [(f"ours_{p}", True, p) for p in programs] + [("sgd", False, "cond")]:
    init_s, run, flops, opt_state = make_stepper(config, use_kfac, every, prog)
    sides[label] = {"init_s": init_s, "warmup_s": run(warmup_steps), "run": run, "flops": flops,
                    "opt_state": opt_state}
  ours = f"ours_{programs[0]}"       # "two" programs where the statistics are periodic: the faster (below)
  floor = flop_floor(sides[ours]["flops"], sides["sgd"]["flops"](True), inverse_flops(sides[ours]["opt_state"]),
                     every)
  paired = functools.partial(_paired.compare, min_repeats=args.min_repeats, max_repeats=args.max_repeats,
                             min_seconds=0.0)
  unit = lambda label: (lambda: sides[label]["run"](steps))
  result = {"config": config, "curvature_every": every, "ours_programs": programs[0], **floor}
  bound = TARGET_OVER_FLOOR * floor["flop_floor"]
  kfac_sgd = paired(unit(ours), unit("sgd"), max_ratio=bound)
  result["kfac_over_sgd_step"] = _scaled(kfac_sgd, 1.0)
  over_floor = _scaled(kfac_sgd, floor["flop_floor"])
  result["kfac_over_sgd_over_floor"] = over_floor
  result["ours_step_ms"] = 1e3 * kfac_sgd["candidate_s"] / steps
  result["sgd_step_ms"] = 1e3 * kfac_sgd["reference_s"] / steps
  targets = [{"name": f"kfac_speed/{name}/every={every}/kfac_over_sgd_over_flop_floor", "ratio": over_floor["ratio"],
              "ratio_ci95": over_floor["ratio_ci95"],
              **_paired.target_verdict(over_floor["ratio"], *over_floor["ratio_ci95"], max_ratio=TARGET_OVER_FLOOR)}]
  if every > 1:
    result["two_over_cond_step"] = _scaled(paired(unit("ours_two"), unit("ours_cond")), 1.0)
  result["ours_compile_s"] = compile_seconds(sides[ours]["init_s"], sides[ours]["warmup_s"], warmup_steps,
                                             kfac_sgd["candidate_s"] / steps)
  if kfac_jax_python:
    worker = KfacJax(kfac_jax_python, config, every)
    try:
      kj = lambda: worker.run(steps)
      kj_sgd = lambda: worker.run(steps, sgd=True)
      vs = paired(unit(ours), kj, max_ratio=TARGET_OVER_KFAC_JAX if config["model"] == "cnn" else None)
      result["ours_over_kfac_jax_step"] = _scaled(vs, 1.0)
      result["kfac_jax_over_own_sgd_step"] = _scaled(paired(kj, kj_sgd), 1.0)
      result["kfac_jax_step_ms"] = 1e3 * vs["reference_s"] / steps
      result["kfac_jax_compile_s"] = compile_seconds(worker.header["init_s"], worker.header["warmup_s"],
                                                     warmup_steps, vs["reference_s"] / steps)
      result["ours_over_kfac_jax_compile"] = result["ours_compile_s"] / result["kfac_jax_compile_s"]
      result["kfac_jax_versions"] = worker.header["versions"]
      if config["model"] == "cnn":   # the goal where ours is above its floor; on the MLP reported only
        targets.append({"name": f"kfac_speed/{name}/every={every}/ours_over_kfac_jax_step", "ratio": vs["ratio"],
                        "ratio_ci95": vs["ratio_ci95"],
                        **{k: vs[k] for k in ("target", "meets_target", "decided")}})
    finally:
      worker.close()
  return result, targets


def _scaled(compared: dict, divisor: float) -> dict:
  """The ratio and interval of ``compare`` divided by a constant (the flop floor), with the repeats."""
  return {"ratio": compared["ratio"] / divisor, "ratio_ci95": [v / divisor for v in compared["ratio_ci95"]],
          "repeats": compared["repeats"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--min-repeats", type=int, default=7, help="paired repeats at least (see _paired.compare)")
  parser.add_argument("--max-repeats", type=int, default=21, help="paired repeats at most")
  parser.add_argument("--only", nargs="*", help="config names to run (default: all)")
  parser.add_argument("--full", action="store_true", help="larger models (784-512-512-10 MLP, 32x32 CNN)")
  parser.add_argument("--kfac-jax-python", default=DEFAULT_KFAC_JAX_PYTHON)
  parser.add_argument("--curvature-every", type=int, nargs="+", default=[1, 10],
                      help="factor periods to time (each on both sides)")
  args = parser.parse_args()
  python = args.kfac_jax_python if os.path.exists(args.kfac_jax_python) else None
  note = None if python else (
      f"kfac-jax environment not found at {args.kfac_jax_python}: kfac-jax was skipped, only our numbers and "
      "SGD are measured. Create it with: python -m venv /tmp/kfacjax-venv && /tmp/kfacjax-venv/bin/pip install "
      "jax==0.9.1 kfac-jax==0.0.8 flax==0.12.6")
  if note:
    print(note, file=sys.stderr)
  results, targets = {}, []
  chosen = configs(args.full)
  for every in args.curvature_every:
    for name in args.only or chosen:
      config = chosen[name]
      results[f"{name}/curvature_every={every}"], found = bench(name, config, every, args, python)
      targets.extend(found)
      print(json.dumps({"done": f"{name}/curvature_every={every}", "targets": found}), file=sys.stderr, flush=True)
  print(json.dumps({
      "benchmark": "kfac_speed", "results": results, "targets": targets,
      "inverse_every": HYPER["inverse_every"], "steps_per_sample": HYPER["inverse_every"],
      "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "note": note,
  }, indent=2))


if __name__ == "__main__":
  main()
