"""Training a population of runs as one program: members, grouping, the host loop.

A *member* is one (arm, seed, swept value) training run. Arms whose optimizers share a structure (differ
only in the traced fields of their optimizer family, ``OptimizerSpec.TRACED``) form one *group*: their members are stacked on a leading
population axis and trained by one jitted, vmapped program, not one after another. Each group has its own
checkpoint directory and writes one JSON line per member per ``log_every`` steps to ``metrics.jsonl``.

The host loop touches device values once per chunk of ``log_every`` steps (to check the loss is finite,
log, evaluate and checkpoint); inside a chunk the steps run in a ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import config as config_lib
from experiments import optimizers
from experiments.config import Arm, ExperimentConfig
from experiments.train import progress as progress_lib
from experiments.train import sharding as sharding_lib
from experiments.train import step as step_lib
from experiments.train.checkpoint import Checkpointer
from experiments.train.metrics import MetricsWriter
import wd_optax


class TrainingDiverged(RuntimeError):
  """The loss of some member became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Member:
  """One training run of a population."""
  arm: str
  seed: int
  hp: dict  # values of the group's traced fields (OptimizerSpec.TRACED)
  label: str  # arm name, plus the swept values: "adamw[weight_decay=0.001]"
  swept: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Group:
  """Arms that share a model and an optimizer structure, trained as one vmapped program."""
  name: str
  optim: optimizers.OptimizerSpec
  members: list
  model: config_lib.ModelConfig = dataclasses.field(default_factory=config_lib.ModelConfig)


def _sweep_points(arm: Arm) -> list[dict]:
  points = [{}]
  for key, values in arm.sweep.items():
    points = [dict(p, **{key: float(v)}) for p in points for v in values]
  return points


def make_groups(config: ExperimentConfig, seeds: Sequence[int] | None = None) -> list[Group]:
  """Members of every arm, grouped by model and optimizer structure (order of first appearance)."""
  config_lib.validate(config)
  seeds = list(range(config.seeds)) if seeds is None else list(seeds)
  groups: dict[tuple, Group] = {}
  for arm in config.arms:
    optim, model = config.arm_optim(arm), config.arm_model(arm)
    key = (json.dumps(config_lib.to_dict(model), sort_keys=True),) + optim.static_key()
    if key not in groups:
      groups[key] = Group(name="", optim=optim, members=[], model=model)
    for point in _sweep_points(arm):
      hp = {k: float(point.get(k, getattr(optim, k))) for k in optim.TRACED}
      label = arm.name if not point else arm.name + "[" + ",".join(f"{k}={v:g}" for k, v in point.items()) + "]"
      for seed in seeds:
        groups[key].members.append(Member(arm=arm.name, seed=seed, hp=hp, label=label, swept=point))
  out = list(groups.values())
  for i, group in enumerate(out):
    arms = list(dict.fromkeys(m.arm for m in group.members))
    joined = "+".join(arms)
    group.name = joined if len(joined) <= 48 else f"group{i}_{arms[0]}"
  return out


@dataclasses.dataclass
class Hooks:
  """What a study may replace (see :mod:`experiments.studies`).

  Attributes:
    make_tx: ``make_tx(optim_config, rates) -> optax.GradientTransformation`` for one step.
    grad_fn: ``grad_fn(loss_fn, params, batch, key, model) -> GradResult`` replacing the optimizer family's
      ``value_and_grad`` (same signature; ``model`` is the member's ``step.MemberModel``); its ``extra`` goes
      to ``tx.update``. ``None``: the family's.
    build_model: ``build_model(rngs=...) -> nnx.Module``, replacing ``experiments.models.build`` with the
      config's model (e.g. with K-FAC-registered ``linear_cls`` / ``conv_cls``).
    eval_metrics: ``eval_metrics(apply, params, model_state, x, y) -> {name: scalar}``, traced into the
      evaluation (one member, first test batch) and logged at every evaluation step, e.g. the Jacobian norm
      E‖J_x‖²_F of Zhang et al. Z4 (``apply(params, model_state, x, train) -> (logits, model_state)``).
  """
  make_tx: Callable[..., Any] = optimizers.build
  grad_fn: Callable[..., Any] | None = None
  build_model: Callable[..., Any] | None = None
  eval_metrics: Callable[..., Any] | None = None


def model_inputs(model: config_lib.ModelConfig, dataset) -> dict:
  """Model keyword arguments, with the input size / channels filled in from the data when missing."""
  kwargs = dict(model.kwargs)
  sample = dataset.x_train[0]
  if model.name == "mlp":
    kwargs.setdefault("in_features", int(np.prod(sample.shape)))
  elif model.name in ("resnet1d", "resnet20", "resnet32", "vgg"):
    kwargs.setdefault("in_channels", int(sample.shape[-1]))
  return kwargs


def model_builder(model: config_lib.ModelConfig, dataset, num_classes: int) -> Callable[..., Any]:
  """``build(rngs=...) -> nnx.Module`` of a model config (``experiments.models.build``); with
  ``registered_layers`` its dense and conv layers are ``wd_optax.kfac.Linear`` / ``Conv`` (same numerics)."""
  from experiments import models  # pylint: disable=g-import-not-at-top
  layers = {}
  if model.registered_layers:
    from wd_optax import kfac  # pylint: disable=g-import-not-at-top
    layers = {"linear_cls": kfac.Linear, "conv_cls": kfac.Conv}
  return functools.partial(models.build, model.name, num_classes=num_classes, norm=model.norm, **layers,
                           **model_inputs(model, dataset))


class Program:
  """One group's population: initial state, the jitted chunk/eval functions and the host loop."""

  def __init__(self, config: ExperimentConfig, group: Group, dataset, *, mesh=None, hooks: Hooks | None = None):
    self.config = config
    self.group = group
    self.dataset = dataset
    self.hooks = hooks or Hooks()
    t = config.train
    if mesh is None:
      devices = len(sharding_lib.devices_for(t.num_devices))
      members, _ = sharding_lib.mesh_shape(devices, t.mesh_members, len(group.members), t.batch_size)
      mesh = sharding_lib.make_mesh(t.num_devices, members)
    self.mesh = mesh
    sharding_lib.check_batch_size(t.batch_size, self.mesh)
    if len(dataset.y_train) < t.batch_size:
      raise ValueError(f"train.batch_size ({t.batch_size}) exceeds the training set ({len(dataset.y_train)}).")
    build_model = self.hooks.build_model or model_builder(group.model, dataset, dataset.num_classes)

    # Every member's model is initialised from its seed alone, so arms with the same seed start from the
    # same weights (a paired design). The init is traced once and vmapped over the members' seeds.
    def init_pure(seed):
      model = build_model(rngs=nnx.Rngs(jax.random.key(seed)))
      _, params, rest = nnx.split(model, nnx.Param, ...)
      return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    abstract_model = nnx.eval_shape(lambda: build_model(rngs=nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
    self.graphdef = graphdef
    self._init_models = jax.jit(jax.vmap(init_pure))
    params, model_state = self._init_models(jnp.zeros([1], jnp.uint32))

    # What the optimizer family reads from the model (K-FAC: its registered layers).
    group = self.group = dataclasses.replace(group, optim=group.optim.bind(abstract_model))

    def module(params, model_state):
      return nnx.merge(graphdef, params, model_state)

    def state_of(model):
      return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])

    def apply(params, model_state, x, train):
      model = nnx.merge(graphdef, params, model_state)
      logits = model(x, train=train)
      _, _, new_state = nnx.split(model, nnx.Param, ...)
      return logits, nnx.to_pure_dict(new_state)

    first = lambda tree: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[0]), tree)  # host slice: no per-shape compile
    probe = jnp.asarray(dataset.x_train[: min(32, len(dataset.x_train))])
    cache_key = (json.dumps(config_lib.to_dict(group.model), sort_keys=True), dataset.name, probe.shape)
    if cache_key not in _SCALE_INVARIANT_CACHE:
      _SCALE_INVARIANT_CACHE[cache_key] = scale_invariant_paths(
          lambda p, x: apply(p, first(model_state), x, True)[0], first(params), probe)
    self.scale_invariant = _SCALE_INVARIANT_CACHE[cache_key]
    first_params = first(params)
    if group.optim.lr_norm_sq and not self.scale_invariant:
      raise ValueError(f"optim.lr_norm_sq (group {group.name!r}) scales the steps of scale-invariant layers, but "
                       f"model {group.model.name!r} with norm={group.model.norm!r} has none.")
    measured = frozenset(p for p, leaf in wd_optax.diagnostics.flatten_by_path(first_params).items()
                         if np.ndim(leaf) >= 2)
    augment = None
    if config.data.augment:
      from experiments.data import augment_crop_flip
      augment = augment_crop_flip
    self.spec = step_lib.StepSpec(
        apply=apply, optim=group.optim, total_steps=t.steps, batch_size=t.batch_size,
        num_examples=len(dataset.y_train), scale_invariant=self.scale_invariant, measured=measured,
        make_tx=self.hooks.make_tx, grad_fn=self.hooks.grad_fn, module=module, state_of=state_of, augment=augment,
        label_smoothing=t.label_smoothing, eval_metrics=self.hooks.eval_metrics,
        data_sharding=sharding_lib.batch_sharding(self.mesh) if sharding_lib.data_size(self.mesh) > 1 else None,
        member_axis=sharding_lib.MEMBERS_AXIS if sharding_lib.MEMBERS_AXIS in self.mesh.axis_names else None)

    def init_rest(params, model_state, hp, seeds):
      # (members, 1) of ones without scale-invariant leaves: checkpoints avoid zero-size arrays.
      init_sq = jax.vmap(self.spec.si_sq_norms)(params) if self.scale_invariant else jnp.ones((seeds.shape[0], 1))
      return {
          "step": jnp.zeros(seeds.shape, jnp.int32), "params": params, "model_state": model_state,
          "opt_state": jax.vmap(self.spec.init_opt_state)(params, hp),
          "key": jax.vmap(jax.random.PRNGKey)(seeds), "init_sq_norm": jnp.maximum(init_sq, 1e-12),
      }

    # The population's state is created in place: every device initialises only its own members.
    self._member_sharding = sharding_lib.member_sharding(self.mesh)
    self._init_state = jax.jit(lambda hp, seeds: init_rest(*self._init_models(seeds), hp, seeds),
                               out_shardings=self._member_sharding)
    self.x_train = sharding_lib.replicate(dataset.x_train, self.mesh)
    self.y_train = sharding_lib.replicate(dataset.y_train, self.mesh)
    self.x_test = sharding_lib.replicate(dataset.x_test, self.mesh)
    self.y_test = sharding_lib.replicate(dataset.y_test, self.mesh)
    self._replicated = sharding_lib.replicated(self.mesh)
    spec = self.spec
    self._chunk = jax.jit(functools.partial(step_lib.population_chunk, spec), static_argnums=4)
    self._eval = jax.jit(functools.partial(step_lib.evaluate, spec), static_argnums=3)
    self._eval_extra = (jax.jit(functools.partial(step_lib.evaluate_extra, spec), static_argnums=3)
                        if spec.eval_metrics is not None else None)
    self.reset(group.members)

  def reset(self, members: Sequence[Member]) -> None:
    """Starts a fresh population of ``members`` (same optimizer structure), reusing the compiled functions.

    Sequential runs (one member at a time) call this between runs, so they compile once like the vmapped
    population does.
    """
    members = list(members)
    for m in members:
      if set(m.hp) != set(self.group.optim.TRACED):
        raise ValueError(f"member {m.label!r}: hp must set exactly the traced fields {self.group.optim.TRACED} of "
                         f"optimizer {self.group.optim.name!r}, got {sorted(m.hp)}.")
    self.group = dataclasses.replace(self.group, members=members)
    # Padded to a multiple of the mesh's members axis with copies of the first member (sharding module doc);
    # the copies are dropped from every output.
    self.num_members = len(members)
    padded = members + [members[0]] * (-len(members) % sharding_lib.members_size(self.mesh))
    hp = {k: sharding_lib.global_array(np.asarray([m.hp[k] for m in padded], np.float32), self._member_sharding)
          for k in self.group.optim.TRACED}
    seeds = sharding_lib.global_array(np.asarray([m.seed for m in padded], np.uint32), self._member_sharding)
    self.state = self._init_state(hp, seeds)
    self.hp = hp
    self._step = 0
    self.diverged: dict[int, int] = {}

  @property
  def step(self) -> int:
    """The members' common step count (kept on the host: reading it from the state would be a transfer)."""
    return self._step

  def run_chunk(self, num_steps: int) -> dict:
    """Advances every member by ``num_steps`` steps; returns the chunk's metrics (still on device, padded)."""
    first = sharding_lib.global_array(np.asarray(self._step, np.int32), self._replicated)
    self.state, metrics = self._chunk(self.state, self.hp, self.x_train, self.y_train, num_steps, first)
    self._step += num_steps
    return metrics

  def _fetch(self, tree: Any) -> Any:
    """Host copies of population arrays, without the padding members."""
    return jax.tree.map(lambda x: np.asarray(x)[: self.num_members], sharding_lib.fetch(tree))

  def evaluate(self) -> dict:
    args = (self.state, self.x_test, self.y_test, self.config.train.eval_batch_size)
    out = self._fetch(self._eval(*args))
    if self._eval_extra is not None:
      # Fetched before the study's program is dispatched (and, the first time, compiled): compiling it while
      # the evaluation still ran on the CPU thread pool deadlocked XLA:CPU in a K-FAC study.
      out.update(self._fetch(self._eval_extra(*args)))
    return out

  def params(self, index: int) -> Any:
    """Parameters of member ``index`` as host numpy arrays (every process must call it)."""
    if not 0 <= index < self.num_members:
      raise IndexError(f"member index {index} out of range for a population of {self.num_members}.")
    return jax.tree.map(lambda x: x[index], self._fetch(self.state["params"]))

  def train(self, *, workdir: str | None = None, writer: MetricsWriter | None = None, progress: bool | None = None,
            stop_after: int | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Trains to ``train.steps``, resuming from the latest checkpoint in ``workdir`` if there is one.

    Args:
      workdir: where checkpoints go (``<workdir>/checkpoints/<group>``); ``None``: no checkpoints.
      writer: metrics sink; ``None``: metrics are only returned.
      progress: ``None`` (default): a tqdm bar when stderr is a terminal, else a progress line per chunk (at
        most one every 30 s) with the group, step/total, steps per second and the time left
        (:mod:`experiments.train.progress`); ``True``: the bar; ``False``: neither.
      stop_after: stop once this many steps are done (for tests of resumption).
      log: where to report a resumption (default: nowhere) and checkpoints that cannot be read back
        (default: stderr); those are moved to ``<checkpoints>/<group>/corrupt/`` and the previous
        checkpoint is tried, or, when none is left, training starts from step 0.

    Returns:
      ``{"loss": (members, steps run here) array, "records": [metric dicts]}``.

    Raises:
      TrainingDiverged: a member's loss became non-finite; the message names the step, arm and seed, and
        the last good checkpoint stays in place.
    """
    t = self.config.train
    ckpt = None
    if workdir is not None and t.checkpoint_every:
      ckpt = Checkpointer(os.path.join(workdir, "checkpoints", self.group.name))
      if ckpt.latest_step() is not None:
        warn = log if log is not None else functools.partial(print, file=sys.stderr)
        restored, self.state = ckpt.restore_latest(self.state, lambda line: warn(f"[{self.group.name}] {line}"))
        if restored is not None:
          self._step = int(restored)
          if log is not None:
            log(f"[{self.group.name}] resuming from the checkpoint at step {restored}")
        else:
          warn(f"[{self.group.name}] no readable checkpoint left in {ckpt.directory}; starting from step 0")
    primary = jax.process_index() == 0  # metrics.jsonl is written by process 0 only
    if writer is not None and primary:
      writer.truncate(self.group.name, self.step)
    end = t.steps if stop_after is None else min(t.steps, stop_after)
    losses, records = [], []
    bar = progress_lib.start(progress, self.group.name, total=t.steps, initial=self.step)
    try:
      while self.step < end:
        start = self.step
        num = min(t.log_every - start % t.log_every, end - start)
        metrics = self._fetch(self.run_chunk(num))
        bad = ~np.isfinite(metrics["loss"])
        if bad.any() and t.on_nan == "continue":
          for member, offset in np.argwhere(bad):
            if int(member) not in self.diverged:
              self.diverged[int(member)] = start + int(offset)
              if log is not None:
                m = self.group.members[int(member)]
                log(f"[{self.group.name}] {m.label} seed {m.seed} diverged at step {start + int(offset)}; "
                    "continuing the others (train.on_nan=continue)")
        elif bad.any():
          member, offset = map(int, np.argwhere(bad)[0])
          m = self.group.members[member]
          kept = ckpt.latest_step() if ckpt is not None else None
          raise TrainingDiverged(
              f"Loss became {metrics['loss'][member, offset]} at step {start + offset} (arm {m.label!r}, "
              f"seed {m.seed}, group {self.group.name!r}); training stopped. "
              + (f"The last good checkpoint (step {kept}) is kept in {ckpt.directory}."
                 if kept is not None else "No checkpoint was written before it."))
        losses.append(metrics["loss"])
        step = self.step
        evaluated = {}
        if step % t.eval_every == 0 or step == t.steps:
          evaluated = self.evaluate()
        chunk_records = self._records(step, metrics, evaluated)
        records.extend(chunk_records)
        if writer is not None and primary:
          writer.write(chunk_records)
        if ckpt is not None and (step % t.checkpoint_every == 0 or step == t.steps):
          ckpt.save(step, self.state)
        bar.update(step, loss=f"{float(np.mean(metrics['loss'][:, -1])):.3f}",
                   acc=f"{float(np.mean(metrics['accuracy'][:, -1])):.3f}")
    finally:
      bar.close()
      if ckpt is not None:
        ckpt.close()
    loss = np.concatenate(losses, axis=1) if losses else np.zeros((len(self.group.members), 0))
    return {"loss": loss, "records": records}

  def _records(self, step: int, metrics: dict, evaluated: dict) -> list[dict]:
    out = []
    for i, m in enumerate(self.group.members):
      record = {"group": self.group.name, "arm": m.arm, "label": m.label, "seed": m.seed, "step": step,
                "swept": m.swept, "diverged_at": self.diverged.get(i),
                "train_loss": float(np.mean(metrics["loss"][i])),
                "train_accuracy": float(np.mean(metrics["accuracy"][i]))}
      for key, value in metrics.items():
        if key not in ("loss", "accuracy"):
          record[key] = float(value[i])
      for key, value in evaluated.items():
        record[key] = float(value[i])
      out.append(record)
    return out


# Scale invariance is a property of the architecture: measured once per model config and process.
_SCALE_INVARIANT_CACHE: dict = {}


def scale_invariant_paths(apply_fn, params, batch) -> frozenset:
  """Paths of the leaves whose scaling leaves the train-mode outputs unchanged (``wd_optax.masks.scale_invariant``)."""
  mask = wd_optax.masks.scale_invariant(apply_fn, params, batch)
  return frozenset(p for p, keep in wd_optax.masks.resolve(mask, params).items() if keep)
