"""kfac-jax side of benchmarks/kfac_speed.py, run in kfac-jax's own environment as a subprocess.

Usage (kfac_speed.py starts it; by hand only for debugging):
  /work/.venv-kfacjax/bin/python benchmarks/kfac_jax_worker.py '<config json>'

Builds the model of ``kfac_models.py``, initialises ``kfac_jax.Optimizer`` (true Fisher with sampled
targets, fixed learning rate, momentum and damping, the given inverse and curvature periods), runs ``inverse_every + 1``
warm-up steps, prints ``{"init_s": ..., "warmup_s": ..., "warmup_steps": ...}``, then for each line ``N`` read from stdin runs N steps and prints
``{"seconds": ...}``; a line ``sgd N`` runs N steps of plain SGD with momentum (a jitted jax step in this
environment, kfac-jax's "own SGD") instead; an empty line or EOF ends it.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import kfac_jax  # noqa: E402
import kfac_models  # noqa: E402


def main() -> None:
  config = json.loads(sys.argv[1])
  params = jax.tree.map(jnp.asarray, kfac_models.init_params(config))
  batch = tuple(jnp.asarray(v) for v in kfac_models.make_batch(config))

  def loss_fn(params, batch):
    x, y = batch
    logits = kfac_models.apply(config, params, x)
    kfac_jax.register_softmax_cross_entropy_loss(logits, y)
    return kfac_models.cross_entropy(logits, y)

  optimizer = kfac_jax.Optimizer(
      value_and_grad_func=jax.value_and_grad(loss_fn), l2_reg=0.0,
      use_adaptive_learning_rate=False, learning_rate_schedule=lambda step: config["learning_rate"],
      use_adaptive_momentum=False, momentum_schedule=lambda step: config["momentum"],
      use_adaptive_damping=False, damping_schedule=lambda step: config["damping"],
      estimation_mode="fisher_gradients", curvature_ema=0.95,
      curvature_update_period=config.get("curvature_every", 1),
      inverse_update_period=config["inverse_every"], num_burnin_steps=0, multi_device=False)
  rng = jax.random.PRNGKey(0)
  start = time.perf_counter()
  state = optimizer.init(params, rng, batch)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  # kfac-jax compiles one step with and one without the inverse update (it branches on the Python step):
  # the warm-up covers both.
  warmup_steps = config["inverse_every"] + 1
  start = time.perf_counter()
  for step in range(warmup_steps):
    params, state, stats = optimizer.step(params, state, jax.random.fold_in(rng, step), batch=batch,
                                          global_step_int=step)
  jax.block_until_ready((params, state))
  warmup_s = time.perf_counter() - start
  step = warmup_steps

  @jax.jit
  def sgd_step(params, velocity, batch):
    grads = jax.grad(lambda p: kfac_models.cross_entropy(kfac_models.apply(config, p, batch[0]), batch[1]))(params)
    velocity = jax.tree.map(lambda v, g: config["momentum"] * v + g, velocity, grads)
    return jax.tree.map(lambda p, v: p - config["learning_rate"] * v, params, velocity), velocity

  sgd_params = params
  sgd_velocity = jax.tree.map(jnp.zeros_like, params)
  for _ in range(2):
    sgd_params, sgd_velocity = sgd_step(sgd_params, sgd_velocity, batch)
  jax.block_until_ready(sgd_params)
  print(json.dumps({"init_s": init_s, "warmup_s": warmup_s, "warmup_steps": warmup_steps,
                    "versions": {"kfac_jax": kfac_jax.__version__, "jax": jax.__version__}}), flush=True)
  for line in sys.stdin:
    if not line.strip():
      break
    if line.startswith("sgd"):
      start = time.perf_counter()
      for _ in range(int(line.split()[1])):
        sgd_params, sgd_velocity = sgd_step(sgd_params, sgd_velocity, batch)
      jax.block_until_ready(sgd_params)
      print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
      continue
    start = time.perf_counter()
    for _ in range(int(line)):
      params, state, stats = optimizer.step(params, state, jax.random.fold_in(rng, step), batch=batch,
                                            global_step_int=step)
      step += 1
    jax.block_until_ready((params, state))
    print(json.dumps({"seconds": time.perf_counter() - start, "loss": float(stats["loss"])}), flush=True)


if __name__ == "__main__":
  main()
