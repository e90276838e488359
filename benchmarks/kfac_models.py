"""The benchmark models of benchmarks/kfac_speed.py as plain-jax functions, shared with the kfac-jax worker.

This file imports only jax and numpy, so that it runs in both environments: wd_optax's (jax 0.10) and
kfac-jax's (jax 0.9.1). A model config is a dict:

* ``{"model": "mlp", "sizes": [d_in, h1, ..., classes], "batch": n}``: dense layers with ReLU;
* ``{"model": "cnn", "image": [h, w, c], "channels": [c1, c2], "classes": k, "batch": n}``: 3x3 SAME
  convolutions with ReLU (the second with stride 2), global average pooling, then a dense classifier.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def layer_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
  """``(kind, kernel shape)`` per layer, in order."""
  if config["model"] == "mlp":
    sizes = config["sizes"]
    return [("dense", (a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
  channels = config["image"][-1]
  shapes = []
  for out in config["channels"]:
    shapes.append(("conv", (3, 3, channels, out)))
    channels = out
  shapes.append(("dense", (channels, config["classes"])))
  return shapes


def init_params(config: dict, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  params = []
  for _, shape in layer_shapes(config):
    fan_in = int(np.prod(shape[:-1]))
    params.append({"kernel": (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32),
                   "bias": np.zeros(shape[-1], np.float32)})
  return params


def make_batch(config: dict, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  if config["model"] == "mlp":
    x = rng.normal(size=(config["batch"], config["sizes"][0]))
    classes = config["sizes"][-1]
  else:
    x = rng.normal(size=(config["batch"], *config["image"]))
    classes = config["classes"]
  return x.astype(np.float32), rng.integers(0, classes, size=config["batch"]).astype(np.int32)


def apply(config: dict, params: list[dict], x: jax.Array) -> jax.Array:
  """The forward pass; kfac-jax's graph matcher registers each ``x @ w + b`` and ``conv(x, w) + b``."""
  strides = [1, 2]
  for i, ((kind, _), layer) in enumerate(zip(layer_shapes(config), params)):
    if kind == "conv":
      x = jax.lax.conv_general_dilated(x, layer["kernel"], (strides[i],) * 2, "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + layer["bias"]
    else:
      if x.ndim == 4:
        x = jnp.mean(x, axis=(1, 2))
      x = x @ layer["kernel"] + layer["bias"]
    if i < len(params) - 1:
      x = jax.nn.relu(x)
  return x


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
