"""Experiment configs: plain dataclasses with big_vision-style dotted overrides.

A study is one :class:`ExperimentConfig`: the data, the model, a base optimizer, the training schedule, the
number of seeds and the list of *arms* (named optimizer variants). Every field can be overridden from the
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
import math
import re
import types
import typing
from typing import Any, Callable, Optional, Union


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
  """Which network. ``kwargs`` go to :func:`experiments.models.build` (e.g. ``{"width": 128}``)."""
  name: str = "mlp"
  norm: Optional[str] = "batch_noaffine"
  kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimConfig:
  """An optimizer, as the fields of :func:`experiments.train.optim.make_optimizer` read them.

  Fields in :data:`TRACED_FIELDS` may differ between members of one vmapped program (they are passed
  as arrays); every other field fixes the program's structure, and arms that differ in one are trained
  as separate programs. The last three attributes are read only by the optimizer hooks of the studies
  named in their descriptions (the harness's own optimizers ignore them); they are traced so that arms
  differing only in them share one program.

  Attributes:
    name: ``sgd`` | ``adam`` (``wd_optax.adam``) | ``adam_buffers`` (``wd_optax.scale_by_adam_l2``
      with the three switches below, optionally followed by decoupled decay).
    learning_rate: peak η.
    lr_schedule: ``constant`` | ``cosine`` (to 0 at the last step).
    lr_norm_sq: scale the step of each scale-invariant layer by ‖w_t‖²/‖w_0‖², its squared norm relative to
      its initial value, recomputed every step (Zhang et al. Z2: an lr schedule η_t ∝ ‖w_t‖² in place of
      decay keeps each layer's effective learning rate η_t/‖w_t‖² on the path of the base schedule); the
      other parameters keep the base schedule.
    warmup_steps: linear warm-up length (``constant``/``cosine`` only).
    momentum: heavy-ball μ (SGD).
    nesterov: Nesterov momentum (SGD).
    weight_decay: λ.
    decay: where λ enters: ``l2`` (coupled, inside the momentum buffer), ``decoupled``,
      ``l2_outside_momentum`` (Adam); for ``adam_buffers``, ``l2`` (the buffer switches route λ) or
      ``decoupled`` (the same, followed by decoupled decay with rate ``decoupled_decay``).
    coupling: decoupled-decay coupling (``lr`` | ``schedule`` | ``independent`` | ``corrected``).
    decay_mask: which parameters decay, as regexes over their "/"-joined paths (``conv/kernel``,
      ``layers/0/bias``; see ``wd_optax.masks``): a preset name of :data:`DECAY_MASK_PRESETS` (``all`` |
      ``kernels`` | ``conv``: all but the classifier | ``classifier`` | ``none``), a list of include regexes
      (``[".*kernel$"]``) or a dict ``{"include": [...], "exclude": [...]}`` (either key optional: no
      ``include`` means every parameter). A parameter decays when its path matches an include regex
      (:func:`re.search`) and no exclude regex. From the CLI as JSON:
      ``--set optim.decay_mask='{"include": ["kernel$"], "exclude": ["classifier"]}'``. A regex that matches no
      parameter of the model is an error when the run is checked.
    decay_start: first step (as a fraction of ``train.steps``) at which λ acts.
    decay_end: first step (fraction of ``train.steps``) at which λ stops acting; ``decay_start=0,
      decay_end=1`` is decay throughout, ``0, 0.25`` early decay, ``0.5, 1`` late decay.
    b1, b2, eps: Adam moments.
    l2_in_first_moment, l2_in_second_moment, l2_preconditioned: switches of
      ``wd_optax.scale_by_adam_l2`` (Bjorck et al. buffer ablation).
    preconditioner_floor: φ of ``wd_optax.scale_by_adam_l2`` (``adam_buffers`` only): the update divides by
      max(√v̂, φ) + ε, so an L2 term kept out of the second moment cannot be divided by ε alone where the loss
      gradient vanishes (0: the literal formula).
    decoupled_decay: decoupled λ after ``scale_by_adam_l2`` (``adam_buffers`` with ``decay="decoupled"``).
    classifier_norm: the norm c > 0 at which FixNorm holds the classifier kernel (``classifier_norm`` of
      ``wd_optax.fixnorm``; the ``fixnorm`` study's ``name="fixnorm"`` arms).
    batch_norm: switch the BatchNorm gate of the ``three_mechanisms`` model on (its optimizer sets the
      gate at the first update; ``false``: the same network without normalisation).
    decoupled_fraction: the share of λ that the ``three_mechanisms`` optimizers apply as lr-coupled
      decoupled decay after the update; the rest, λ·(1 − share), is coupled L2 (0: ``l2``, 1: ``decoupled``).
      A traced stand-in for ``decay``, so both placements share one program.
  """
  name: str = "sgd"
  learning_rate: float = 0.1
  lr_schedule: str = "constant"
  lr_norm_sq: bool = False
  warmup_steps: int = 0
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 0.0
  decay: str = "l2"
  coupling: str = "lr"
  decay_mask: Any = "all"   # a preset name, a list of include regexes or {"include": [...], "exclude": [...]}
  decay_start: float = 0.0
  decay_end: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  l2_in_first_moment: bool = True
  l2_in_second_moment: bool = True
  l2_preconditioned: bool = False
  preconditioner_floor: float = 0.0
  decoupled_decay: float = 0.0
  classifier_norm: float = 1.0
  batch_norm: bool = False
  decoupled_fraction: float = 0.0


# Numeric hyperparameters that enter the update only as values: members of one vmapped program may
# differ in them. Everything else changes the optimizer's structure (its state or its code).
TRACED_FIELDS = ("learning_rate", "weight_decay", "decay_start", "decay_end", "decoupled_decay",
                 "classifier_norm", "batch_norm", "decoupled_fraction")


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
      program, reused), or ``auto`` (the default: ``sequential`` on a single CPU device, where vmapping gains
      nothing and costs compile time, ``vmap`` elsewhere). Both give the same metrics up to float32 round-off;
      a resume may change it.
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
  population: str = "auto"


@dataclasses.dataclass
class Arm:
  """A named optimizer variant: overrides of :class:`OptimConfig` fields on top of the base ``optim``.

  ``sweep`` maps one or more traced fields to lists of values; the arm then stands for one member per
  combination (e.g. ``{"weight_decay": [1e-4, 1e-3, 1e-2, 1e-1]}``), all vmapped together.
  """
  name: str
  optim: dict = dataclasses.field(default_factory=dict)
  sweep: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ExperimentConfig:
  """Everything one study run needs; serialised to ``config.json`` in the work directory."""
  name: str = "experiment"
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  seeds: int = 3
  arms: list = dataclasses.field(default_factory=lambda: [Arm("base")])

  def arm_optim(self, arm: Arm) -> OptimConfig:
    """The full optimizer config of ``arm`` (base ``optim`` with the arm's overrides)."""
    _check_keys(arm.optim, OptimConfig, f"arms.{arm.name}")
    return dataclasses.replace(self.optim, **arm.optim)


def to_dict(config: Any) -> Any:
  """A JSON-ready copy of a (nested) config."""
  return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config


def from_dict(data: dict) -> ExperimentConfig:
  """Inverse of :func:`to_dict` for an :class:`ExperimentConfig`."""
  return ExperimentConfig(
      name=data["name"], data=DataConfig(**data["data"]), model=ModelConfig(**data["model"]),
      optim=OptimConfig(**data["optim"]), train=TrainConfig(**data["train"]), seeds=data["seeds"],
      arms=[Arm(**a) for a in data["arms"]])


def _check_keys(overrides: dict, cls: type, where: str) -> None:
  names = {f.name for f in dataclasses.fields(cls)}
  for key in overrides:
    if key not in names:
      raise KeyError(f"{where}: unknown key {key!r}; known keys: {sorted(names)}.")


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
    if len(parts) != 3:
      raise KeyError(f"--set {key}: arm overrides are arms.<arm name>.<optim field>.")
    arms = {a.name: a for a in config.arms}
    if parts[1] not in arms:
      raise KeyError(f"--set {key}: unknown arm {parts[1]!r}; arms: {sorted(arms)}.")
    field = {f.name: f for f in dataclasses.fields(OptimConfig)}.get(parts[2])
    if field is None:
      raise KeyError(f"--set {key}: unknown optimizer key {parts[2]!r}; known keys: "
                     f"{sorted(f.name for f in dataclasses.fields(OptimConfig))}.")
    arms[parts[1]].optim[parts[2]] = parse_value(text, _field_type(OptimConfig, field), key)
    arms[parts[1]].sweep.pop(parts[2], None)
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


# Optimizer names the harness's own ``make_tx`` builds; a study with a ``make_tx`` hook declares its own names
# (``Study.optimizers``). ``decay`` values per harness optimizer, as ``wd_optax`` accepts them.
OPTIMIZERS = ("sgd", "adam", "adam_buffers")
DECAYS = {"sgd": ("l2", "decoupled"), "adam": ("l2", "decoupled", "l2_outside_momentum"),
          "adam_buffers": ("l2", "decoupled")}
COUPLINGS = ("lr", "schedule", "independent", "corrected")
LR_SCHEDULES = ("constant", "cosine")
# The decay-mask presets, each an include/exclude pair of regexes over parameter paths (compiled by
# ``wd_optax.masks.include`` / ``exclude`` in :func:`experiments.train.optim.decay_mask`). ``kernels``: the
# ``kernel`` leaves (Dense/Conv weights; on every harness model exactly ``wd_optax.masks.kernels()``, the leaves
# with ndim >= 2); ``conv``: every parameter but the classifier (Zhang et al.'s ablation decays all layers, the
# final FC only, or all but the final FC).
DECAY_MASK_PRESETS = {
    "all": {"include": None, "exclude": []},
    "kernels": {"include": ["kernel$"], "exclude": []},
    "conv": {"include": None, "exclude": ["classifier"]},
    "classifier": {"include": ["classifier"], "exclude": []},
    "none": {"include": None, "exclude": [".*"]},
}
ON_NAN = ("stop", "continue")
POPULATION = ("auto", "vmap", "sequential")


def validate(config: ExperimentConfig, *, optimizers: tuple[str, ...] | None = None) -> None:
  """Checks every value a run reads, before any data is read or program compiled, naming the offending key.

  Covers the training loop, the data set's name and ranges (not its files: see
  :func:`experiments.runner.check_study`), the model's name and norm, and every arm's full optimizer config
  (its overrides on top of ``optim`` and each of its sweep values). ``optimizers``: the ``optim.name`` values
  allowed (e.g. :data:`OPTIMIZERS` or a study's ``Study.optimizers``; ``None``, the default: not checked here,
  the name is the business of whichever ``make_tx`` builds the optimizer).
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
  _validate_optim(config.optim, {}, lambda key: f"optim.{key}", "", "", optimizers)
  for arm in config.arms:
    _check_keys(arm.optim, OptimConfig, f"arms.{arm.name}")
    if not isinstance(arm.sweep, dict):
      raise ValueError(f"arms.{arm.name}.sweep: expected a dict of field -> list of values, got {arm.sweep!r}.")
    where = lambda key, arm=arm: (f"arms.{arm.name}.{key}" if key in arm.optim or key in arm.sweep
                                  else f"optim.{key}")
    _validate_optim(config.arm_optim(arm), arm.sweep, where, f"arms.{arm.name}.sweep", f" (in arm {arm.name!r})",
                    optimizers)


def _validate_optim(optim: OptimConfig, sweep: dict, where: Callable[[str], str], sweep_where: str, context: str,
                    optimizers: tuple[str, ...] | None) -> None:
  """One full optimizer config (and its sweep); ``where(key)`` names the config key that set ``key``."""
  for key, values in sweep.items():
    if key not in TRACED_FIELDS:
      raise ValueError(f"{sweep_where}: {key!r} cannot be swept inside one program; sweepable fields: "
                       f"{TRACED_FIELDS}.")
    if not isinstance(values, (list, tuple)) or not values:
      raise ValueError(f"{sweep_where}.{key}: expected a non-empty list, got {values!r}.")
    for value in values:
      _check_value(key, value, f"{sweep_where}.{key}")
  if optimizers is not None and optim.name not in optimizers:
    raise ValueError(f"{where('name')} must be one of {tuple(optimizers)}, got {optim.name!r}.")
  choices = {"lr_schedule": LR_SCHEDULES, "coupling": COUPLINGS}
  if optim.name in DECAYS:  # a study's own optimizer may read decay its own way (or not at all)
    choices["decay"] = DECAYS[optim.name]
  for key, allowed in choices.items():
    if getattr(optim, key) not in allowed:
      which = f" for name={optim.name!r}" if key == "decay" else ""
      raise ValueError(f"{where(key)} must be one of {allowed}{which}, got {getattr(optim, key)!r}"
                       f"{context if where(key).startswith('optim.') else ''}.")
  try:
    decay_mask_spec(optim.decay_mask, where("decay_mask"))
  except ValueError as e:
    raise ValueError(f"{str(e)[:-1]}{context if where('decay_mask').startswith('optim.') else ''}.") from None
  for key in _VALUE_CHECKS:
    if key not in sweep:
      _check_value(key, getattr(optim, key), where(key))
  for key in _BOOL_FIELDS:
    if not isinstance(getattr(optim, key), bool):
      raise ValueError(f"{where(key)} must be true or false, got {getattr(optim, key)!r}.")
  if _bad_int(optim.warmup_steps) or optim.warmup_steps < 0:
    raise ValueError(f"{where('warmup_steps')} must be an int >= 0, got {optim.warmup_steps!r}.")
  window = [(s, e) for s in sweep.get("decay_start", [optim.decay_start])
            for e in sweep.get("decay_end", [optim.decay_end]) if s > e]
  if window:
    both = where("decay_start") + where("decay_end")
    raise ValueError(f"{where('decay_start')} ({window[0][0]}) must be <= {where('decay_end')} ({window[0][1]})"
                     f"{context if 'optim.' in both else ''}.")


def decay_mask_spec(value: Any, where: str = "optim.decay_mask") -> dict:
  """``optim.decay_mask`` as ``{"include": [regex, ...] | None, "exclude": [regex, ...]}`` (``None``: every path).

  ``value`` is a preset name (:data:`DECAY_MASK_PRESETS`), a list of include regexes or a dict with the keys
  ``include`` and/or ``exclude``. A bad value raises ``ValueError`` naming ``where`` (the config key that set it).
  Whether each regex matches a parameter depends on the model: :func:`experiments.runner.check_study` checks it.
  """
  expected = (f"a preset name {tuple(DECAY_MASK_PRESETS)}, a list of include regexes or a dict "
              '{"include": [...], "exclude": [...]}')
  if isinstance(value, str):
    if value not in DECAY_MASK_PRESETS:
      raise ValueError(f"{where} must be {expected}, got {value!r}.")
    preset = DECAY_MASK_PRESETS[value]
    return {"include": None if preset["include"] is None else list(preset["include"]),
            "exclude": list(preset["exclude"])}
  if isinstance(value, (list, tuple)):
    value = {"include": value}
  elif not isinstance(value, dict):
    raise ValueError(f"{where} must be {expected}, got {value!r}.")
  unknown = sorted(set(value) - {"include", "exclude"})
  if unknown:
    raise ValueError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {unknown}; expected {expected}.")
  spec = {"include": value.get("include"), "exclude": value.get("exclude", [])}
  for key, regexes in spec.items():
    if regexes is None and key == "include":
      continue
    if (not isinstance(regexes, (list, tuple)) or (key == "include" and not regexes)
        or not all(isinstance(r, str) for r in regexes)):
      raise ValueError(f"{where}.{key} must be a {'non-empty ' if key == 'include' else ''}list of regex strings, "
                       f"got {regexes!r}.")
    for regex in regexes:
      try:
        re.compile(regex)
      except re.error as e:
        raise ValueError(f"{where}.{key}: invalid regex {regex!r} ({e}).") from None
    spec[key] = list(regexes)
  return spec


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


def _validate_model(model: ModelConfig) -> None:
  from experiments import models  # pylint: disable=g-import-not-at-top
  if model.name not in models.NAMES:
    raise ValueError(f"model.name must be one of {models.NAMES}, got {model.name!r}.")
  if model.norm not in models.NORMS:
    raise ValueError(f"model.norm must be one of {models.NORMS}, got {model.norm!r}.")
  if not isinstance(model.kwargs, dict):
    raise ValueError(f"model.kwargs must be a dict, got {model.kwargs!r}.")


# Optimizer fields with a restricted range: (test, what is expected). Traced fields reach the optimizer as
# arrays, past its own argument checks, and a bad one fails silently: a negative classifier norm flips the
# classifier's sign at every step, a fraction outside [0, 1] makes one of the two decays negative, a negative
# learning rate climbs the loss and a negative λ grows the weights. Each sweep value is checked too.
_finite = lambda v: math.isfinite(v)
_VALUE_CHECKS = {
    "learning_rate": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "decoupled_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "decay_start": (lambda v: 0 <= v <= 1, "a fraction of train.steps in [0, 1]"),
    "decay_end": (lambda v: 0 <= v <= 1, "a fraction of train.steps in [0, 1]"),
    "classifier_norm": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "batch_norm": (lambda v: v in (0, 1), "true or false"),
    "decoupled_fraction": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "b1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "b2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "eps": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "preconditioner_floor": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
}
_BOOL_FIELDS = ("lr_norm_sq", "nesterov", "l2_in_first_moment", "l2_in_second_moment", "l2_preconditioned")


def _check_value(key: str, value: Any, where: str) -> None:
  test, expected = _VALUE_CHECKS[key]
  numeric = isinstance(value, (int, float)) and (key == "batch_norm" or not isinstance(value, bool))
  if not numeric or not test(value):
    raise ValueError(f"{where} must be {expected}, got {value!r}.")
