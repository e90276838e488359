"""The up-front checks of a command: everything a study's run needs, before any data is read or program compiled.

:func:`study_config` builds a study's config from ``--quick``, ``--seeds`` and ``--set`` and validates it
(the one validation of a command: what runs after it takes the config as valid); :func:`check_study` then
checks the data set's files, the device count and mesh, the model (built and applied abstractly), every
member's optimizer and the work directory; :func:`check_reproduce` does so for every study of a
``reproduce`` run. A bad input raises :class:`UsageError` (a ``ValueError``) naming the offending key,
which the command line prints as one ``error:`` line.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
from typing import Sequence

from experiments import config as config_lib
from experiments import studies as studies_lib


class UsageError(ValueError):
  """A command line or config that cannot run; the message names the offending key."""


def _split_key(assignment: str) -> tuple[str, str]:
  key, _, text = assignment.partition("=")
  return key.strip(), text


def _scope(assignment: str) -> tuple[str | None, str]:
  """``(study, rest)`` for ``STUDY.key=value`` (a registered study's name first), else ``(None, assignment)``."""
  head, _, rest = assignment.partition(".")
  if rest and "=" not in head and head.strip() in studies_lib.REGISTRY:
    return head.strip(), rest
  return None, assignment


def study_config(study: studies_lib.Study, *, quick: bool, seeds: int | None = None,
                 overrides: Sequence[str] = (), reproduce: bool = False) -> config_lib.ExperimentConfig:
  """The study's config with ``--seeds`` and ``--set`` overrides applied (validated).

  An override ``STUDY.key=value`` applies to that study only. With ``reproduce=True`` (every study gets the
  same overrides) an override scoped to another study, or an unscoped ``arms.ARM.field`` for an arm this
  study lacks, is skipped here (:func:`check_reproduce` refuses one that matches no study at all); otherwise
  both are errors. An ``optim.field`` override that every arm replaces with its own value would change
  nothing, and is an error naming the arms.
  """
  config = study.make_config(quick)
  if seeds is not None:
    config.seeds = seeds
  arm_names = {a.name for a in config.arms}
  base_overrides = []
  sections = {f.name for f in dataclasses.fields(config_lib.ExperimentConfig)}
  for assignment in overrides:
    scope, local = _scope(assignment)
    head = _split_key(assignment)[0].split(".")[0]
    if scope is None and head not in sections and "=" in assignment:
      raise UsageError(f"--set {_split_key(assignment)[0]}: {head!r} is neither a config key "
                       f"({', '.join(sorted(sections))}) nor a study ({', '.join(studies_lib.names())}).")
    if scope is not None and scope != study.name:
      if reproduce:
        continue
      raise UsageError(f"--set {_split_key(assignment)[0]}: scoped to study {scope!r}, but this command runs "
                       f"{study.name!r}; drop the '{scope}.' prefix or run {scope}.")
    key, _ = _split_key(local)
    parts = key.split(".")
    if parts[0] == "arms" and len(parts) == 3 and parts[1] not in arm_names:
      if reproduce and scope is None:
        continue
      raise UsageError(f"--set {_split_key(assignment)[0]}: unknown arm {parts[1]!r} in study {study.name!r}; "
                       f"its arms: {', '.join(a.name for a in config.arms)}.")
    config_lib.apply_override(config, local)
    if len(parts) == 2 and parts[0] == "optim":
      base_overrides.append((_split_key(assignment)[0], parts[1]))
  for key, field in base_overrides:
    fixing = [a.name for a in config.arms if field in a.optim or field in a.sweep]
    if config.arms and len(fixing) == len(config.arms):
      raise UsageError(
          f"--set {key}: every arm of study {study.name!r} sets its own {field} ({', '.join(fixing)}), so the "
          f"base value would change nothing; set it per arm with --set {study.name}.arms.ARM.{field}=VALUE.")
  config_lib.validate(config, allowed=study.optimizers)
  return config


def check_study(study: studies_lib.Study, workdir: str, *, quick: bool, seeds: int | None = None,
                overrides: Sequence[str] = (), reproduce: bool = False):
  """Everything a run of ``study`` in ``workdir`` needs, checked before any data is read or program compiled.

  The config (:func:`study_config`), the data set (for CIFAR the directory, every file's size, record count and
  labels, reading the label bytes only), the device count, the model (built and applied abstractly on the
  data's input shape: ``jax.eval_shape``, no compilation), every member's optimizer (its ``make_tx``, the
  study's hook or the harness's, called with the member's rates as plain numbers) and the work directory
  (a ``config.json`` of another config is refused). Returns ``(config, hooks)``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  from experiments import optimizers  # pylint: disable=g-import-not-at-top
  from experiments.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from experiments.train.population import make_groups  # pylint: disable=g-import-not-at-top

  config = study_config(study, quick=quick, seeds=seeds, overrides=overrides, reproduce=reproduce)
  d, t = config.data, config.train
  n_train, _ = data_lib.check(d.name, data_dir=d.data_dir, n_train=d.n_train, n_test=d.n_test,
                              label_noise=d.label_noise, prefix="data.")
  if n_train < t.batch_size:
    raise UsageError(f"train.batch_size ({t.batch_size}) exceeds the {n_train} training examples of "
                     f"data.name={d.name!r}: every step draws a full batch.")
  visible = jax.device_count()
  if t.num_devices > visible:
    raise UsageError(f"train.num_devices must be between 0 and {visible} (the visible devices; 0: all), "
                     f"got {t.num_devices}.")
  devices = t.num_devices or visible
  if jax.process_count() > 1 and devices != visible:
    raise UsageError(f"train.num_devices={t.num_devices} uses {devices} of the {visible} devices of a "
                     f"{jax.process_count()}-process run; every process must hold part of the mesh: set "
                     "train.num_devices=0 (all devices).")
  if t.mesh_members and devices % t.mesh_members:
    raise UsageError(f"train.mesh_members ({t.mesh_members}) must divide the number of devices ({devices}); "
                     "set train.mesh_members or train.num_devices.")
  if t.batch_size % (devices // (t.mesh_members or 1)) and (t.mesh_members or jax.default_backend() == "cpu"):
    data = devices // (t.mesh_members or 1)
    raise UsageError(f"train.batch_size ({t.batch_size}) must be divisible by the data axis of the mesh ({devices} "
                     f"devices / train.mesh_members {t.mesh_members or 1} = {data}); set train.batch_size, "
                     "train.mesh_members or train.num_devices.")
  try:
    hooks = study.hooks(config) if study.hooks else None
  except (ValueError, TypeError, KeyError) as e:
    raise UsageError(f"study {study.name!r} cannot set up its hooks for this config: {_one_line(e)}") from None
  import json  # pylint: disable=g-import-not-at-top
  built, bound = {}, {}
  for arm in config.arms:
    model = config.arm_model(arm)
    key = json.dumps(config_lib.to_dict(model), sort_keys=True)
    if key not in built:
      built[key] = _check_model(config, model, hooks, f"arms.{arm.name}.model" if arm.model else "model")
    params, module = built[key]
    try:
      bound[arm.name] = config.arm_optim(arm).bind(module)
    except ValueError as e:
      raise UsageError(f"arms.{arm.name}: {_one_line(e)}") from None
    _check_decay_masks(config, arm, params)
  make_tx = hooks.make_tx if hooks is not None and hooks.make_tx is not None else optimizers.build
  for group in make_groups(config, seeds=[0]):
    for member in group.members:
      hp = member.hp
      rates = dict(hp, peak_learning_rate=hp["learning_rate"])
      try:
        make_tx(bound[member.arm], rates)
      except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"arms.{member.label}: the optimizer cannot be built: {_one_line(e)}") from None
  workdir_lib.check_workdir(workdir, config)
  return config, hooks


def _one_line(e: BaseException) -> str:
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  return " ".join(str(text).split())


def _check_model(config: config_lib.ExperimentConfig, m: config_lib.ModelConfig, hooks, where: str = "model"):
  """Builds the model ``m`` and applies it to a batch of two inputs of the data's shape, abstractly.

  Returns the parameter tree the optimizer sees (pure dict of abstract arrays) and the abstract module.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  from experiments.train.program import model_builder  # pylint: disable=g-import-not-at-top

  d = config.data
  shape = data_lib.input_shape(d.name, d.flatten)
  num_classes = data_lib.NUM_CLASSES[d.name]
  if hooks is not None and hooks.build_model is not None:
    build = hooks.build_model
    what = f"the model of study {config.name!r} (its build_model hook, model.kwargs={m.kwargs})"
  else:
    build = model_builder(m, types.SimpleNamespace(x_train=np.zeros((1, *shape), np.float32)), num_classes)
    what = f"{where}.name={m.name!r} with {where}.kwargs={m.kwargs}"

  def logits():
    return build(rngs=nnx.Rngs(0))(jnp.zeros((2, *shape), jnp.float32), train=False)

  try:
    out = jax.eval_shape(logits)
  except Exception as e:  # pylint: disable=broad-except  # any failure to build is a config error here
    raise UsageError(f"{what} does not build or run on data.name={d.name!r} inputs of shape {shape}"
                     f"{' (flattened)' if d.flatten else ''}: {type(e).__name__}: {_one_line(e)}") from None
  if tuple(out.shape) != (2, num_classes):
    raise UsageError(f"{what} gives logits of shape {tuple(out.shape)[1:]} per input; data.name={d.name!r} has "
                     f"{num_classes} classes.")
  # The parameter tree the optimizer sees (its paths and shapes), for the decay-mask check.
  module = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0)))
  _, params, _ = nnx.split(module, nnx.Param, ...)
  return nnx.to_pure_dict(params), module


def _check_decay_masks(config: config_lib.ExperimentConfig, arm, params) -> None:
  """Every arm's mask fields (``decay_mask``, FixNorm's ``classifier``...) against the model's parameter paths.

  A regex that matches no parameter is an error naming the config key and the regex: an include typo would
  switch the decay off, an exclude typo would decay what it meant to spare (``wd_optax.masks.exclude`` only
  warns, for generic exclusions in library use; a config names the model's own paths).
  """
  import warnings  # pylint: disable=g-import-not-at-top
  import wd_optax  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  from experiments import optimizers  # pylint: disable=g-import-not-at-top

  optim = config.arm_optim(arm)
  for field in dataclasses.fields(optim):
    if not field.metadata.get("mask"):
      continue
    spec = getattr(optim, field.name)
    where = f"arms.{arm.name}.{field.name}" if field.name in arm.optim else f"optim.{field.name}"
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        wd_optax.masks.resolve(optimizers.decay_mask(spec), params)
    except (ValueError, TypeError, UserWarning) as e:
      raise UsageError(f"{where}={decay_mask_text(spec)}: {_one_line(e)}") from None


def decay_mask_text(spec) -> str:
  """``optim.decay_mask`` as written in a config: a preset's name, else its JSON."""
  import json  # pylint: disable=g-import-not-at-top
  return spec if isinstance(spec, str) else json.dumps(spec)


def check_reproduce(workdir: str, *, quick: bool, seeds: int | None = None, overrides: Sequence[str] = (),
                    names: Sequence[str] | None = None) -> dict:
  """:func:`check_study` for every study of a ``reproduce`` run (work directories ``workdir/<study>``).

  Returns ``{study: (config, hooks)}``, which :func:`experiments.cli.reproduce` runs as checked. An unscoped ``arms.ARM.field`` override applies to the studies that have an arm ``ARM``; one that matches no
  study is an error naming every study's arms.
  """
  names = list(names or studies_lib.reproduced())
  arms = {name: [a.name for a in studies_lib.get(name).make_config(quick).arms] for name in names}
  for assignment in overrides:
    scope, _ = _scope(assignment)
    parts = _split_key(assignment)[0].split(".")
    if scope is None and parts[0] == "arms" and len(parts) == 3 and not any(parts[1] in a for a in arms.values()):
      listing = "; ".join(f"{name}: {', '.join(a)}" for name, a in arms.items())
      raise UsageError(f"--set {_split_key(assignment)[0]}: no study has an arm {parts[1]!r} (arms by study: "
                       f"{listing}); scope it to one study with --set STUDY.arms.ARM.{parts[2]}=VALUE.")
  checked = {}
  for name in names:
    try:
      checked[name] = check_study(studies_lib.get(name), os.path.join(workdir, name), quick=quick, seeds=seeds,
                                  overrides=overrides, reproduce=True)
    except (KeyError, ValueError, OSError) as e:
      raise UsageError(f"{name}: {_one_line(e)}") from None
  return checked
