"""The evaluation programs of a population: test loss and accuracy, and a study's own metrics.

Both are vmapped over the members (split over the mesh's ``members`` axis like the training step) and run on
the parameters and running statistics (BatchNorm in eval mode) of every member; the host loop
(:mod:`experiments.train.loop`) calls them every ``train.eval_every`` steps and at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from experiments.train.step import StepSpec


def evaluate(spec: StepSpec, state: dict, x_test: jax.Array, y_test: jax.Array, batch_size: int) -> dict:
  """Test loss and accuracy of every member (running BN statistics), in batches of ``batch_size``."""
  n = x_test.shape[0]
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  weights = jnp.concatenate([jnp.ones(n, jnp.float32), jnp.zeros(pad, jnp.float32)])
  xs = jnp.concatenate([x_test, jnp.zeros((pad,) + x_test.shape[1:], x_test.dtype)])
  ys = jnp.concatenate([y_test, jnp.zeros((pad,), y_test.dtype)])
  xs = xs.reshape((num_batches, batch_size) + x_test.shape[1:])
  ys = ys.reshape(num_batches, batch_size)
  ws = weights.reshape(num_batches, batch_size)

  def one_member(params, model_state):
    def one_batch(batch):
      x, y, w = batch
      logits, _ = spec.apply(params, model_state, x, False)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      return jnp.sum(losses * w), jnp.sum(correct * w)
    losses, correct = jax.lax.map(one_batch, (xs, ys, ws))
    return {"test_loss": jnp.sum(losses) / n, "test_accuracy": jnp.sum(correct) / n}

  return jax.vmap(one_member, spmd_axis_name=spec.member_axis)(state["params"], state["model_state"])


def evaluate_extra(spec: StepSpec, state: dict, x_test: jax.Array, y_test: jax.Array, batch_size: int) -> dict:
  """The study's ``eval_metrics`` of every member on the first test batch (a separate program from
  :func:`evaluate`, so a study's linear algebra is not nested in the evaluation loop)."""
  first = min(batch_size, x_test.shape[0])
  return jax.vmap(lambda p, m: spec.eval_metrics(spec.apply, p, m, x_test[:first], y_test[:first]),
                  spmd_axis_name=spec.member_axis)(
      state["params"], state["model_state"])
