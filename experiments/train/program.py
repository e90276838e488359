"""The jitted programs of one group: the model as pure functions, the step spec, the population state.

:class:`Model` is a config's model split once (``nnx.split``) into a graph definition and pure functions of
arrays: a vmapped init over the members' seeds, ``apply``, and the leaves the step measures (the
scale-invariant ones, probed once per :class:`Model` with ``wd_optax.masks.scale_invariant``, and every
kernel). :class:`Program` builds one group's :class:`~experiments.train.step.StepSpec`, the jitted chunk and
evaluation functions, and the population's state on the device mesh; the host loop that drives it (NaN
policy, evaluation cadence, checkpoints, metrics, progress) is :mod:`experiments.train.loop`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import config as config_lib
from experiments.config import ExperimentConfig
from experiments.train import evaluate as evaluate_lib
from experiments.train import feed as feed_lib
from experiments import optimizers
from experiments.train import sharding as sharding_lib
from experiments.train import step as step_lib
from experiments.train.population import Group, Member
import wd_optax


@dataclasses.dataclass
class Hooks:
  """What a study may replace (see :mod:`experiments.studies`).

  Attributes:
    make_tx: ``make_tx(spec, rates) -> optax.GradientTransformation`` for one step (default: ``spec.build``).
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


def scale_invariant_paths(apply_fn, params, batch) -> frozenset:
  """Paths of the leaves whose scaling leaves the train-mode outputs unchanged (``wd_optax.masks.scale_invariant``)."""
  mask = wd_optax.masks.scale_invariant(apply_fn, params, batch)
  return frozenset(p for p, keep in wd_optax.masks.resolve(mask, params).items() if keep)


@jax.jit
def _join_steps(pieces: dict) -> dict:
  """Per-step metrics ``(members, steps)`` of consecutive pieces of a chunk, joined along the steps."""
  return {k: jnp.concatenate(v, axis=1) for k, v in pieces.items()}


class Model:
  """A config's model (or a study's ``build_model`` hook) as pure functions of arrays.

  Every member's model is initialised from its seed alone, so arms with the same seed start from the same
  weights (a paired design). Scale invariance is a property of the architecture: it is probed once per
  :class:`Model`, on seed 0's parameters and the first 32 training inputs, when first asked for. Programs of
  the same config (the groups of one run) share one :class:`Model` and so one probe.
  """

  def __init__(self, config: ExperimentConfig, dataset, hooks: Hooks | None = None,
               model: config_lib.ModelConfig | None = None):
    hooks = hooks or Hooks()
    self.config = config
    self.model_config = model if model is not None else config.model
    self.build = hooks.build_model or model_builder(self.model_config, dataset, dataset.num_classes)
    build = self.build

    def init_pure(seed):
      model = build(rngs=nnx.Rngs(jax.random.key(seed)))
      _, params, rest = nnx.split(model, nnx.Param, ...)
      return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    # The abstract module: what an optimizer family reads from the model (K-FAC: its registered layers).
    self.abstract = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(self.abstract, nnx.Param, ...)
    self.graphdef = graphdef
    # seeds (members,) -> (params, model_state), every leaf with a leading members axis.
    self.init = jax.jit(jax.vmap(init_pure))
    self._probe_inputs = dataset.x_train[: min(32, len(dataset.x_train))]

  @staticmethod
  def key(config: ExperimentConfig, group: Group) -> str:
    """What a :class:`Model` of ``group`` is built from (the hooks aside, which one run shares): its model config."""
    del config
    return json.dumps(config_lib.to_dict(group.model), sort_keys=True)

  def module(self, params, model_state):
    """The ``nnx.Module`` with ``params`` and ``model_state`` (pure dicts)."""
    return nnx.merge(self.graphdef, params, model_state)

  @staticmethod
  def state_of(module) -> dict:
    """A module's non-parameter state (batch statistics) as a pure dict."""
    return nnx.to_pure_dict(nnx.split(module, nnx.Param, ...)[2])

  def apply(self, params, model_state, x, train):
    """``(logits, new model_state)`` of the merged model."""
    model = nnx.merge(self.graphdef, params, model_state)
    logits = model(x, train=train)
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return logits, nnx.to_pure_dict(new_state)

  @functools.cached_property
  def _first(self) -> tuple:
    """Seed 0's parameters and model state, as host-sliced arrays (no per-shape compile)."""
    first = lambda tree: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[0]), tree)
    params, model_state = self.init(jnp.zeros([1], jnp.uint32))
    return first(params), first(model_state)

  @functools.cached_property
  def scale_invariant(self) -> frozenset:
    """Paths of the scale-invariant leaves (``lr_norm_sq``, η_eff, angular updates)."""
    params, model_state = self._first
    return scale_invariant_paths(lambda p, x: self.apply(p, model_state, x, True)[0], params,
                                 jnp.asarray(self._probe_inputs))

  @functools.cached_property
  def measured(self) -> frozenset:
    """Paths of the leaves whose norms are logged: every leaf of two or more dimensions."""
    params, _ = self._first
    return frozenset(p for p, leaf in wd_optax.diagnostics.flatten_by_path(params).items() if np.ndim(leaf) >= 2)


class Program:
  """One group's population: its step spec, initial state and the jitted chunk/eval functions.

  ``model``: the config's :class:`Model`, shared by the programs of one run (built here when not given);
  ``mesh``: the device mesh (default: from ``train.num_devices`` and ``train.mesh_members``). :meth:`train`
  runs the host loop (:func:`experiments.train.loop.train`). ``feed`` is ``train.feed`` resolved
  (:mod:`experiments.train.feed`): with ``device`` the training set is replicated on the mesh
  (``x_train``, ``y_train``), with ``host`` it stays on the host (they are ``None``) and every chunk's
  batches are gathered there.
  """

  def __init__(self, config: ExperimentConfig, group: Group, dataset, *, mesh=None, hooks: Hooks | None = None,
               model: Model | None = None):
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
    self.model = model if model is not None else Model(config, dataset, self.hooks, group.model)
    # What the optimizer family reads from the model and the mesh (K-FAC: its registered layers, and the
    # data axis it splits its inverses over).
    group = self.group = dataclasses.replace(group, optim=group.optim.bind(self.model.abstract, self.mesh))
    self.graphdef = self.model.graphdef
    self.scale_invariant = self.model.scale_invariant
    if group.optim.lr_norm_sq and not self.scale_invariant:
      raise ValueError(f"optim.lr_norm_sq (group {group.name!r}) scales the steps of scale-invariant layers, but "
                       f"model {group.model.name!r} with norm={group.model.norm!r} has none.")
    self.spec = self._step_spec()
    # The population's state is created in place: every device initialises only its own members.
    self._member_sharding = sharding_lib.member_sharding(self.mesh)
    self._init_state = jax.jit(self._initial_state, out_shardings=self._member_sharding)
    # Host-fed (train.feed): the training set stays on the host, each process gathers its devices' blocks.
    self.feed = feed_lib.resolve(t.feed)
    self._feed = self._feed_keys = None
    self.x_train = self.y_train = None
    if self.feed == "host":
      self._feed = feed_lib.HostFeed(self.mesh, dataset.x_train, dataset.y_train, t.batch_size)
    else:
      self.x_train = sharding_lib.replicate(dataset.x_train, self.mesh)
      self.y_train = sharding_lib.replicate(dataset.y_train, self.mesh)
    self.x_test = sharding_lib.replicate(dataset.x_test, self.mesh)
    self.y_test = sharding_lib.replicate(dataset.y_test, self.mesh)
    self._replicated = sharding_lib.replicated(self.mesh)
    spec = self.spec
    self._chunk = jax.jit(functools.partial(step_lib.population_chunk, spec), static_argnums=4)
    self._eval = jax.jit(functools.partial(evaluate_lib.evaluate, spec), static_argnums=3)
    self._eval_extra = (jax.jit(functools.partial(evaluate_lib.evaluate_extra, spec), static_argnums=3)
                        if spec.eval_metrics is not None else None)
    self.reset(group.members)

  def _step_spec(self) -> step_lib.StepSpec:
    config, t, dataset = self.config, self.config.train, self.dataset
    augment = None
    if config.data.augment:
      from experiments.data import augment_crop_flip
      augment = augment_crop_flip
    return step_lib.StepSpec(
        apply=self.model.apply, optim=self.group.optim, total_steps=t.steps, batch_size=t.batch_size,
        num_examples=len(dataset.y_train), scale_invariant=self.scale_invariant, measured=self.model.measured,
        make_tx=self.hooks.make_tx, grad_fn=self.hooks.grad_fn, module=self.model.module,
        state_of=self.model.state_of, augment=augment,
        label_smoothing=t.label_smoothing, eval_metrics=self.hooks.eval_metrics,
        data_sharding=sharding_lib.batch_sharding(self.mesh) if sharding_lib.data_size(self.mesh) > 1 else None,
        member_axis=sharding_lib.MEMBERS_AXIS if sharding_lib.MEMBERS_AXIS in self.mesh.axis_names else None)

  def _initial_state(self, hp: dict, seeds: jax.Array) -> dict:
    params, model_state = self.model.init(seeds)
    # (members, 1) of ones without scale-invariant leaves: checkpoints avoid zero-size arrays.
    init_sq = jax.vmap(self.spec.si_sq_norms)(params) if self.scale_invariant else jnp.ones((seeds.shape[0], 1))
    return {
        "step": jnp.zeros(seeds.shape, jnp.int32), "params": params, "model_state": model_state,
        "opt_state": jax.vmap(self.spec.init_opt_state)(params, hp),
        "key": jax.vmap(jax.random.PRNGKey)(seeds), "init_sq_norm": jnp.maximum(init_sq, 1e-12),
    }

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
    self._fetch_feed_keys()
    self.hp = hp
    self._step = 0
    self.diverged: dict[int, int] = {}

  @property
  def step(self) -> int:
    """The members' common step count (kept on the host: reading it from the state would be a transfer)."""
    return self._step

  def load(self, state: dict, step: int) -> None:
    """Replaces the population's state (e.g. by one restored from a checkpoint) and its step count."""
    self.state, self._step = state, int(step)
    self._fetch_feed_keys()

  def _fetch_feed_keys(self) -> None:
    """The members' data keys on the host, from which a host feed draws the batch indices."""
    if self._feed is not None:
      self._feed_keys = np.asarray(sharding_lib.fetch(self.state["key"]))

  def run_chunk(self, num_steps: int) -> dict:
    """Advances every member by ``num_steps`` steps; returns the chunk's metrics (still on device, padded).

    Host-fed, a chunk longer than the feed's :meth:`~experiments.train.feed.HostFeed.piece_steps` runs as
    several programs of at most that many steps; their losses and accuracies are joined, the diagnostics are
    the last one's (the chunk's last step).
    """
    if self._feed is None:
      first = sharding_lib.global_array(np.asarray(self._step, np.int32), self._replicated)
      self.state, metrics = self._chunk(self.state, self.hp, self.x_train, self.y_train, num_steps, first)
      self._step += num_steps
      return metrics
    pieces, left = [], num_steps
    piece = self._feed.piece_steps(len(self._feed_keys))
    while left:
      steps = min(piece, left)
      batches = self._feed.batches(self._feed_keys, self._step, steps)
      first = sharding_lib.global_array(np.asarray(self._step, np.int32), self._replicated)
      self.state, metrics = self._chunk(self.state, self.hp, None, None, steps, first, batches)
      self._step += steps
      left -= steps
      pieces.append(metrics)
    if len(pieces) == 1:
      return pieces[0]
    return dict(pieces[-1], **_join_steps({k: [p[k] for p in pieces] for k in ("loss", "accuracy")}))

  def fetch(self, tree: Any) -> Any:
    """Host copies of population arrays, without the padding members."""
    return jax.tree.map(lambda x: np.asarray(x)[: self.num_members], sharding_lib.fetch(tree))

  def evaluate(self) -> dict:
    """Test loss and accuracy (and the study's ``eval_metrics``) of every member, on the host."""
    args = (self.state, self.x_test, self.y_test, self.config.train.eval_batch_size)
    out = self.fetch(self._eval(*args))
    if self._eval_extra is not None:
      # Fetched before the study's program is dispatched (and, the first time, compiled): compiling it while
      # the evaluation still ran on the CPU thread pool deadlocked XLA:CPU in a K-FAC study.
      out.update(self.fetch(self._eval_extra(*args)))
    return out

  def params(self, index: int) -> Any:
    """Parameters of member ``index`` as host numpy arrays (every process must call it)."""
    if not 0 <= index < self.num_members:
      raise IndexError(f"member index {index} out of range for a population of {self.num_members}.")
    return jax.tree.map(lambda x: x[index], self.fetch(self.state["params"]))

  def train(self, **kwargs) -> dict:
    """Trains to ``train.steps`` with the host loop: :func:`experiments.train.loop.train` (same arguments)."""
    from experiments.train import loop  # loop imports this module
    return loop.train(self, **kwargs)
