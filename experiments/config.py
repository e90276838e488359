"""Experiment configs: plain dataclasses with big_vision-style dotted overrides.

A study is one :class:`ExperimentConfig`: the data, the model, a base optimizer (a spec of one of the families
of :mod:`experiments.optimizers`), the training schedule, the number of seeds and the list of *arms* (named
optimizer variants: overrides of the spec's fields). Every field can be overridden from the
command line without editing code::

  python -m experiments early_decay --set train.steps=2000 --set optim.learning_rate=0.05 \\
      --set data.label_noise=0.3 --set arms.always.weight_decay=1e-3

``--set`` values are parsed with the type of the field they replace (``true``/``false`` for bools, ``none``
for optional fields, JSON for dicts and lists). An unknown key is an error that names it and lists the keys
that exist. ``STUDY.KEY=VALUE`` applies to one study only (for ``reproduce``, which runs them all), and an
``optim.FIELD`` override is refused where every arm of the study sets FIELD itself (it would change nothing).
:func:`validate` checks every value before a run starts; ``python -m experiments STUDY --help`` lists a study's
arms and fields.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Optional, Union

from experiments import optimizers


@dataclasses.dataclass
class DataConfig:
  """Which data set, how much of it, and how hard.

  Attributes:
    name: ``mnist1d`` | ``digits`` | ``cifar10`` | ``cifar100`` (see :func:`experiments.data.load`).
    n_train: training examples kept (``None``: all).
    n_test: test examples kept (``None``: all).
    label_noise: fraction of training labels replaced by a random class (fixed by ``seed``); makes
      regularisation matter on small data.
    seed: seed of the subset and noise draw (the same for every training seed, so arms are paired).
    flatten: flatten each input to a vector (for the MLP).
    augment: random crop + flip of image batches (CIFAR).
    data_dir: where raw data live (``None``: the loader's default / bundled copy).
  """
  name: str = "mnist1d"
  n_train: Optional[int] = None
  n_test: Optional[int] = None
  label_noise: float = 0.0
  seed: int = 0
  flatten: bool = False
  augment: bool = False
  data_dir: Optional[str] = None


@dataclasses.dataclass
class ModelConfig:
  """Which network.

  Attributes:
    name: a model of :data:`experiments.models.NAMES`.
    norm: what follows every hidden layer (:data:`experiments.models.NORMS`: ``batch_noaffine``, ``batch``,
      ``layer`` or none).
    kwargs: keyword arguments of :func:`experiments.models.build` (e.g. ``{"hidden": [128, 128]}``).
    registered_layers: build the dense and conv layers as ``wd_optax.kfac.Linear`` / ``Conv`` (the ``kfac``
      optimizer family needs them; the numerics are those of ``nnx.Linear`` / ``Conv``).
  """
  name: str = "mlp"
  norm: Optional[str] = "batch_noaffine"
  kwargs: dict = dataclasses.field(default_factory=dict)
  registered_layers: bool = False


@dataclasses.dataclass
class TrainConfig:
  """The training loop.

  Attributes:
    steps: optimizer steps per run.
    batch_size: global batch (split over devices).
    log_every: steps per on-device chunk; one metrics line per member per chunk (loss/accuracy are the
      chunk means, diagnostics are taken at the chunk's last step).
    eval_every: steps between test-set evaluations (a multiple of ``log_every``; the last step is always
      evaluated).
    checkpoint_every: steps between orbax checkpoints (a multiple of ``log_every``; 0 disables).
    eval_batch_size: test examples per evaluation batch.
    num_devices: devices of the mesh (0: all visible, of every process in a multi-process run).
    mesh_members: size of the mesh's ``members`` axis, over which a population's members are split (each
      device trains ``members / mesh_members`` whole members); the ``data`` axis, over which each member's
      batch is split, gets ``num_devices / mesh_members``. 0: automatic, 1 on CPU (pure data parallelism),
      members first on accelerators (see :mod:`experiments.train.sharding`). A population that is not a
      multiple of it is padded with copies of its first member, dropped from every output.
    label_smoothing: cross-entropy label smoothing.
    on_nan: ``stop`` (raise, naming the step; the last good checkpoint stays) or ``continue`` (for sweeps whose
      extreme settings may diverge: the diverged member is marked with ``diverged_at`` in its records and
      trained on; its NaN weights cannot affect the other members).
    tensorboard: also write the metrics as TensorBoard event files, one run per member under
      ``<workdir>/tensorboard/<label>/seed<seed>`` (``metrics.jsonl`` stays the source of truth; a resume may
      switch it on or off).
    population: how a group's members are executed (:mod:`experiments.train.execution`): ``vmap`` (one
      vmapped program for all of them), ``sequential`` (one after another through one compiled single-member
      program, reused), or ``auto`` (``sequential`` on a single CPU device, where vmapping may gain nothing and
      costs compile time, ``vmap`` elsewhere). Both give the same metrics up to float32 round-off; a resume may
      change it. The default is ``vmap``, the mode every published result was run in, until
      ``benchmarks/sweep_throughput.py`` has decided on a quiet machine which is faster for the quick studies.
    feed: where the training batches come from (:mod:`experiments.train.feed`): ``device`` (the training set
      replicated on every device, each step's batch drawn there), ``host`` (each process gathers from its
      host copy only the examples of its own devices' members and batch slices, per chunk, and the chunk
      consumes them; the training set is never put on a device), or ``auto`` (default: ``host`` in a
      multi-process run, ``device`` on one process, how every published result ran). Both draw the same
      examples and give the same metrics up to float32 round-off; a resume may change it.
  """
  steps: int = 500
  batch_size: int = 128
  log_every: int = 25
  eval_every: int = 100
  checkpoint_every: int = 0
  eval_batch_size: int = 1000
  num_devices: int = 1
  mesh_members: int = 0
  label_smoothing: float = 0.0
  on_nan: str = "stop"
  tensorboard: bool = False
  population: str = "vmap"
  feed: str = "auto"


@dataclasses.dataclass
class Arm:
  """A named optimizer variant: overrides of fields of the base ``optim`` spec.

  ``optim`` may switch the family with ``"name"`` (the fields both families have keep the base's values); a
  field the arm's family lacks is an error listing its fields (:mod:`experiments.optimizers`). ``sweep`` maps
  one or more of the family's traced fields to lists of values; the arm then stands for one member per
  combination (e.g. ``{"weight_decay": [1e-4, 1e-3, 1e-2, 1e-1]}``), all vmapped together. ``model`` overrides
  fields of the base :class:`ModelConfig` (e.g. ``{"norm": None}``: the same network without normalisation);
  arms with different models train as different programs.
  """
  name: str
  optim: dict = dataclasses.field(default_factory=dict)
  sweep: dict = dataclasses.field(default_factory=dict)
  model: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ExperimentConfig:
  """Everything one study run needs; serialised to ``config.json`` in the work directory."""
  name: str = "experiment"
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optim: optimizers.OptimizerSpec = dataclasses.field(default_factory=optimizers.SGD)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  seeds: int = 3
  arms: list = dataclasses.field(default_factory=lambda: [Arm("base")])

  def arm_optim(self, arm: Arm) -> optimizers.OptimizerSpec:
    """The full optimizer spec of ``arm`` (base ``optim`` with the arm's overrides)."""
    return optimizers.with_overrides(self.optim, arm.optim, f"arms.{arm.name}")

  def arm_model(self, arm: Arm) -> ModelConfig:
    """The model config of ``arm`` (base ``model`` with the arm's ``model`` overrides)."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in arm.model:
      if key not in names:
        raise KeyError(f"arms.{arm.name}.model: unknown key {key!r}; known keys: {sorted(names)}.")
    return dataclasses.replace(self.model, **arm.model)


def to_dict(config: Any) -> Any:
  """A JSON-ready copy of a (nested) config; an optimizer spec carries its family's ``name``."""
  if isinstance(config, optimizers.OptimizerSpec):
    return config.to_dict()
  if isinstance(config, ExperimentConfig):
    out = dataclasses.asdict(config)
    out["optim"] = config.optim.to_dict()
    return out
  return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config


def from_dict(data: dict) -> ExperimentConfig:
  """Inverse of :func:`to_dict` for an :class:`ExperimentConfig`."""
  return ExperimentConfig(
      name=data["name"], data=DataConfig(**data["data"]), model=ModelConfig(**data["model"]),
      optim=optimizers.from_dict(data["optim"]), train=TrainConfig(**data["train"]), seeds=data["seeds"],
      arms=[Arm(**a) for a in data["arms"]])


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
  origin = typing.get_origin(tp)
  if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return (args[0] if len(args) == 1 else Any), True
  return tp, False


def parse_value(text: str, tp: Any, key: str) -> Any:
  """Parses the string ``text`` as a value of type ``tp`` for the key ``key`` (named in errors)."""
  tp, optional = _unwrap_optional(tp)
  if optional and text.lower() in ("none", "null"):
    return None
  try:
    if tp is bool:
      if text.lower() in ("true", "1", "yes"):
        return True
      if text.lower() in ("false", "0", "no"):
        return False
      raise ValueError("expected true or false")
    if tp is int:
      return int(text)
    if tp is float:
      return float(text)
    if tp is str:
      return text
    if tp in (dict, list) or typing.get_origin(tp) in (dict, list):
      value = json.loads(text)
      expected = typing.get_origin(tp) or tp
      if not isinstance(value, expected):
        raise ValueError(f"expected a JSON {expected.__name__}")
      return value
  except ValueError as e:
    raise ValueError(f"--set {key}={text}: cannot parse as {getattr(tp, '__name__', tp)} ({e}).") from None
  try:
    return json.loads(text)
  except ValueError:
    return text


def apply_override(config: ExperimentConfig, assignment: str) -> ExperimentConfig:
  """Applies one ``key=value`` override in place and returns ``config``.

  Keys are dotted field paths (``train.steps``, ``optim.learning_rate``, ``seeds``) or
  ``arms.<arm name>.<optim field>`` for one arm. ``model.kwargs.<name>`` sets one model keyword.
  """
  if "=" not in assignment:
    raise ValueError(f"--set {assignment!r}: expected key=value.")
  key, text = assignment.split("=", 1)
  key = key.strip()
  parts = key.split(".")
  if parts[0] == "arms":
    if len(parts) == 4 and parts[2] == "model":
      arms = {a.name: a for a in config.arms}
      if parts[1] not in arms:
        raise KeyError(f"--set {key}: unknown arm {parts[1]!r}; arms: {sorted(arms)}.")
      fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
      if parts[3] not in fields:
        raise KeyError(f"--set {key}: unknown model key {parts[3]!r}; known keys: {sorted(fields)}.")
      arms[parts[1]].model[parts[3]] = parse_value(text, _field_type(ModelConfig, fields[parts[3]]), key)
      return config
    if len(parts) != 3:
      raise KeyError(f"--set {key}: arm overrides are arms.<arm name>.<optim field> or "
                     "arms.<arm name>.model.<model field>.")
    arms = {a.name: a for a in config.arms}
    if parts[1] not in arms:
      raise KeyError(f"--set {key}: unknown arm {parts[1]!r}; arms: {sorted(arms)}.")
    arm = arms[parts[1]]
    if parts[2] == "name":
      arm.optim["name"] = parse_value(text, str, key)
      optimizers.family(arm.optim["name"], f"--set {key}")
      return config
    cls = optimizers.family(arm.optim.get("name", config.optim.name), f"arms.{arm.name}.name")
    if parts[2] not in cls.field_names():
      raise optimizers.unknown_field_error(cls, parts[2], f"--set {key}")
    arm.optim[parts[2]] = parse_value(text, cls.field_type(parts[2]), key)
    arm.sweep.pop(parts[2], None)
    return config
  if parts[0] == "optim":
    if len(parts) != 2:
      raise KeyError(f"--set {key}: optimizer overrides are optim.<field>.")
    cls = type(config.optim)
    if parts[1] == "name":
      config.optim = optimizers.with_overrides(config.optim, {"name": parse_value(text, str, key)}, "optim")
    elif parts[1] not in cls.field_names():
      raise optimizers.unknown_field_error(cls, parts[1], f"--set {key}")
    else:
      config.optim = dataclasses.replace(config.optim, **{parts[1]: parse_value(text, cls.field_type(parts[1]), key)})
    return config
  if parts[:2] == ["model", "kwargs"] and len(parts) == 3:
    config.model.kwargs[parts[2]] = parse_value(text, Any, key)
    return config
  target: Any = config
  for depth, part in enumerate(parts):
    if not dataclasses.is_dataclass(target):
      raise KeyError(f"--set {key}: {'.'.join(parts[:depth])} is not a config section.")
    fields = {f.name: f for f in dataclasses.fields(target)}
    if part not in fields:
      where = ".".join(parts[:depth]) or "the config"
      raise KeyError(f"--set {key}: unknown key {part!r} in {where}; known keys: {sorted(fields)}.")
    if depth == len(parts) - 1:
      if part == "arms":
        raise KeyError(f"--set {key}: set one arm field with arms.<arm name>.<optim field>.")
      value = parse_value(text, _field_type(type(target), fields[part]), key)
      setattr(target, part, value)
    else:
      target = getattr(target, part)
  return config


def _field_type(cls: type, field: dataclasses.Field) -> Any:
  hints = typing.get_type_hints(cls)
  return hints.get(field.name, Any)


ON_NAN = ("stop", "continue")
POPULATION = ("auto", "vmap", "sequential")
FEED = ("auto", "device", "host")


def validate(config: ExperimentConfig, *, allowed: tuple[str, ...] | None = None) -> None:
  """Checks every value a run reads, before any data is read or program compiled, naming the offending key.

  Covers the training loop, the data set's name and ranges (not its files: see
  :func:`experiments.checks.check_study`), the model's name and norm, and every arm's full optimizer config
  (its overrides on top of ``optim`` and each of its sweep values, by its family's spec:
  :meth:`experiments.optimizers.OptimizerSpec.validate`). ``allowed``: the optimizer families a study accepts
  (``Study.optimizers``; ``None``, the default: every registered family).
  """
  t = config.train
  for key in ("steps", "batch_size", "log_every", "eval_every", "eval_batch_size"):
    if _bad_int(getattr(t, key)) or getattr(t, key) <= 0:
      raise ValueError(f"train.{key} must be > 0, got {getattr(t, key)}.")
  if t.eval_every % t.log_every:
    raise ValueError(f"train.eval_every ({t.eval_every}) must be a multiple of train.log_every ({t.log_every}).")
  if _bad_int(t.checkpoint_every) or t.checkpoint_every < 0 or (t.checkpoint_every
                                                                and t.checkpoint_every % t.log_every):
    raise ValueError(f"train.checkpoint_every ({t.checkpoint_every}) must be 0 or a multiple of "
                     f"train.log_every ({t.log_every}).")
  if t.on_nan not in ON_NAN:
    raise ValueError(f"train.on_nan must be one of {ON_NAN}, got {t.on_nan!r}.")
  if t.population not in POPULATION:
    raise ValueError(f"train.population must be one of {POPULATION}, got {t.population!r}.")
  if t.feed not in FEED:
    raise ValueError(f"train.feed must be one of {FEED}, got {t.feed!r}.")
  if not isinstance(t.tensorboard, bool):
    raise ValueError(f"train.tensorboard must be true or false, got {t.tensorboard!r}.")
  if _bad_int(t.num_devices) or t.num_devices < 0:
    raise ValueError(f"train.num_devices must be an int >= 0 (0: all visible devices), got {t.num_devices!r}.")
  if _bad_int(t.mesh_members) or t.mesh_members < 0:
    raise ValueError(f"train.mesh_members must be an int >= 0 (0: automatic), got {t.mesh_members!r}.")
  if t.mesh_members and t.num_devices and t.num_devices % t.mesh_members:
    raise ValueError(f"train.mesh_members ({t.mesh_members}) must divide train.num_devices ({t.num_devices}).")
  if not (_is_number(t.label_smoothing) and 0 <= t.label_smoothing < 1):
    raise ValueError(f"train.label_smoothing must be a number in [0, 1), got {t.label_smoothing!r}.")
  if _bad_int(config.seeds) or config.seeds <= 0:
    raise ValueError(f"seeds must be > 0, got {config.seeds}.")
  _validate_data(config)
  _validate_model(config.model)
  if not config.arms:
    raise ValueError("arms: a study needs at least one arm.")
  names = [a.name for a in config.arms]
  if len(set(names)) != len(names):
    raise ValueError(f"arms: names must be unique, got {names}.")
  # The base optimizer first, so that a bad --set optim.X is named as such; then every arm's full config.
  if not isinstance(config.optim, optimizers.OptimizerSpec):
    raise ValueError(f"optim must be an optimizer spec of experiments.optimizers, got {config.optim!r}.")
  _check_family(config.optim.name, "optim.name", allowed)
  config.optim.validate(lambda key: f"optim.{key}")
  for arm in config.arms:
    if not isinstance(arm.optim, dict) or not isinstance(arm.sweep, dict) or not isinstance(arm.model, dict):
      raise ValueError(f"arms.{arm.name}: optim, sweep and model must be dicts, got {arm.optim!r}, {arm.sweep!r} "
                       f"and {arm.model!r}.")
    if arm.model:
      _validate_model(config.arm_model(arm), f"arms.{arm.name}.model.")
    spec = config.arm_optim(arm)
    _check_family(spec.name, f"arms.{arm.name}.name" if "name" in arm.optim else "optim.name", allowed)
    where = lambda key, arm=arm: (f"arms.{arm.name}.{key}" if key in arm.optim or key in arm.sweep
                                  else f"optim.{key}")
    try:
      spec.validate(where, arm.sweep, f"arms.{arm.name}.sweep")
    except ValueError as e:
      text = str(e)
      raise ValueError(text if f"arms.{arm.name}" in text else f"{text[:-1]} (in arm {arm.name!r}).") from None


def _check_family(name: str, where: str, allowed: tuple[str, ...] | None) -> None:
  optimizers.family(name, where)
  if allowed is not None and name not in allowed:
    raise ValueError(f"{where} must be one of {tuple(allowed)}, got {name!r}.")


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad_int(value: Any) -> bool:
  return isinstance(value, bool) or not isinstance(value, int)


def _validate_data(config: ExperimentConfig) -> None:
  from experiments import data as data_lib  # numpy-only at import time apart from jax, already loaded
  d = config.data
  if d.name not in data_lib.NAMES:
    raise ValueError(f"data.name must be one of {data_lib.NAMES}, got {d.name!r}.")
  if not (_is_number(d.label_noise) and 0.0 <= d.label_noise <= 1.0):
    raise ValueError(f"data.label_noise must be a fraction in [0, 1], got {d.label_noise!r}.")
  for key in ("n_train", "n_test"):
    value = getattr(d, key)
    if value is not None and (_bad_int(value) or value <= 0):
      raise ValueError(f"data.{key} must be a positive int or none, got {value!r}.")
  if d.n_train is not None and d.n_train < config.train.batch_size:
    raise ValueError(f"data.n_train ({d.n_train}) must be at least train.batch_size ({config.train.batch_size}): "
                     "every step draws a full batch.")
  if _bad_int(d.seed):
    raise ValueError(f"data.seed must be an int, got {d.seed!r}.")
  if d.augment and (d.name == "mnist1d" or d.flatten):
    raise ValueError(f"data.augment crops and flips images; data.name={d.name!r} with data.flatten={d.flatten} "
                     "gives no (H, W, C) images.")
  if d.data_dir is not None and d.name not in ("cifar10", "cifar100"):
    raise ValueError(f"data.data_dir is read for CIFAR only ({d.name!r} is bundled); set it to none.")


def _validate_model(model: ModelConfig, prefix: str = "model.") -> None:
  from experiments import models  # pylint: disable=g-import-not-at-top
  if model.name not in models.NAMES:
    raise ValueError(f"{prefix}name must be one of {models.NAMES}, got {model.name!r}.")
  if model.norm not in models.NORMS:
    raise ValueError(f"{prefix}norm must be one of {models.NORMS}, got {model.norm!r}.")
  if not isinstance(model.kwargs, dict):
    raise ValueError(f"{prefix}kwargs must be a dict, got {model.kwargs!r}.")
  if not isinstance(model.registered_layers, bool):
    raise ValueError(f"{prefix}registered_layers must be true or false, got {model.registered_layers!r}.")
