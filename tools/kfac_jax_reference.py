"""Writes the kfac-jax reference for the first K-FAC update of a 3-layer MLP (tests/test_kfac_reference.py).

kfac-jax needs its own environment (it pins older jax/flax than wd_optax). Run from the repository root:

  python3 -m venv /work/.venv-kfacjax
  /work/.venv-kfacjax/bin/pip install "jax==0.9.1" "jaxlib==0.9.1" "flax==0.12.6" "kfac-jax==0.0.8"
  /work/.venv-kfacjax/bin/python tools/kfac_jax_reference.py tests/data/kfac_jax_reference.npz

The settings make the first update a plain preconditioned gradient step, -lr * (F + damping I)^-1 g with
kfac-jax's pi-adjusted factored damping: the empirical Fisher ("fisher_empirical", the true labels), no
adaptive learning rate, momentum or damping, no L2, no burn-in, inverses on the first step, and exact
(non-averaged) factors, since the first moving-average update of kfac-jax uses the new statistics alone.
The model is plain jax (x @ w + b, tanh), which kfac-jax's graph matcher registers as three dense layers;
the inputs, labels and initial parameters are drawn with numpy and stored with the update.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import kfac_jax

SIZES = (6, 16, 12, 5)
BATCH = 32
LEARNING_RATE = 0.1
DAMPING = 1e-2
SEED = 0


def make_data():
  rng = np.random.default_rng(SEED)
  x = rng.normal(size=(BATCH, SIZES[0])).astype(np.float32)
  y = rng.integers(0, SIZES[-1], size=BATCH).astype(np.int32)
  params = {}
  for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
    params[f"kernel_{i}"] = (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
    params[f"bias_{i}"] = (0.1 * rng.normal(size=(fan_out,))).astype(np.float32)
  return x, y, params


def apply(params, x):
  h = x
  for i in range(len(SIZES) - 1):
    h = h @ params[f"kernel_{i}"] + params[f"bias_{i}"]
    if i < len(SIZES) - 2:
      h = jnp.tanh(h)
  return h


def loss_fn(params, batch):
  x, y = batch
  logits = apply(params, x)
  kfac_jax.register_softmax_cross_entropy_loss(logits, y)
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


def main(out_path: str) -> None:
  x, y, np_params = make_data()
  params = {k: jnp.asarray(v) for k, v in np_params.items()}
  optimizer = kfac_jax.Optimizer(
      value_and_grad_func=jax.value_and_grad(loss_fn),
      l2_reg=0.0,
      use_adaptive_learning_rate=False,
      learning_rate_schedule=lambda step: LEARNING_RATE,
      use_adaptive_momentum=False,
      momentum_schedule=lambda step: 0.0,
      use_adaptive_damping=False,
      damping_schedule=lambda step: DAMPING,
      estimation_mode="fisher_empirical",
      curvature_ema=0.95,
      inverse_update_period=1,
      num_burnin_steps=0,
      multi_device=False,
  )
  rng = jax.random.PRNGKey(SEED)
  batch = (jnp.asarray(x), jnp.asarray(y))
  state = optimizer.init(params, rng, batch)
  new_params, _, stats = optimizer.step(params, state, rng, batch=batch, global_step_int=0)
  out = {"x": x, "y": y, "learning_rate": np.float32(LEARNING_RATE), "damping": np.float32(DAMPING),
         "loss": np.float32(stats["loss"])}
  for name, value in np_params.items():
    out[f"param_{name}"] = value
    out[f"update_{name}"] = np.asarray(new_params[name]) - value  # step() donates params
  np.savez_compressed(out_path, **out)
  print(f"wrote {out_path} (kfac-jax {kfac_jax.__version__}, jax {jax.__version__}); loss {out['loss']:.6f}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/kfac_jax_reference.npz")
