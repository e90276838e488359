"""The base of every optimizer spec: the fields all families share, their checks, schedules and masks.

A spec is a frozen dataclass. Each field is either *static* (it fixes the program: the transform's code or its
state's structure; hashable, part of the compile key) or *traced* (a number that enters the update only as a
value, so members of one vmapped program may differ in it). A family lists its traced fields in ``TRACED``;
everything else is static. :meth:`OptimizerSpec.build` returns the optax transform of one step from the static
fields (``self``) and the traced values of that step (η_t and λ_t after the schedule and the decay window).

The learning-rate schedule comes from optax, the decay window from ``wd_optax.schedules.window`` (with traced
edges, so arms that differ only in when decay acts share one program), and the decay mask is compiled by
``wd_optax.masks`` from regexes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

import wd_optax

Rates = Mapping[str, jax.Array]
PyTree = Any


class GradResult(NamedTuple):
  """What a family's :meth:`OptimizerSpec.value_and_grad` (or a study's ``grad_fn``) returns: the loss, the
  logits and new model state, the gradients, and extra keyword arguments for ``tx.update`` (K-FAC's curvature;
  empty for first-order optimizers)."""
  loss: jax.Array
  logits: jax.Array
  model_state: PyTree
  grads: PyTree
  extra: dict

LR_SCHEDULES = ("constant", "cosine")
COUPLINGS = tuple(wd_optax.COUPLINGS)
# The decay-mask presets, each an include/exclude pair of regexes over parameter paths (compiled by
# ``wd_optax.masks.include`` / ``exclude`` in :func:`decay_mask`). ``kernels``: the ``kernel`` leaves (Dense/Conv
# weights; on every harness model but the sequence models, whose embeddings are matrices too, exactly
# ``wd_optax.masks.kernels()``, the leaves with ndim >= 2); ``conv``:
# every parameter but the classifier (Zhang et al.'s ablation decays all layers, the final FC only, or all but
# the final FC).
DECAY_MASK_PRESETS = {
    "all": {"include": None, "exclude": []},
    "kernels": {"include": ["kernel$"], "exclude": []},
    "conv": {"include": None, "exclude": ["classifier"]},
    "classifier": {"include": ["classifier"], "exclude": []},
    "none": {"include": None, "exclude": [".*"]},
}


def check(test, expected: str) -> dict:
  """Field metadata: the value must pass ``test``; ``expected`` says what in the error."""
  return {"check": (test, expected)}


def choices(*allowed: str) -> dict:
  return {"choices": tuple(allowed)}


_finite = lambda v: math.isfinite(v)
NONNEGATIVE = check(lambda v: _finite(v) and v >= 0, "a finite number >= 0")
POSITIVE = check(lambda v: _finite(v) and v > 0, "a finite number > 0")
FRACTION = check(lambda v: 0 <= v <= 1, "a fraction of train.steps in [0, 1]")
UNIT_OPEN = check(lambda v: 0 <= v < 1, "a number in [0, 1)")


def decay_mask_spec(value: Any, where: str = "optim.decay_mask") -> dict:
  """A mask field as ``{"include": [regex, ...] | None, "exclude": [regex, ...]}`` (``None``: every path).

  ``value`` is a preset name (:data:`DECAY_MASK_PRESETS`), a list of include regexes or a dict with the keys
  ``include`` and/or ``exclude``. A bad value raises ``ValueError`` naming ``where`` (the config key that set it).
  Whether each regex matches a parameter depends on the model: :func:`experiments.checks.check_study` checks it.
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


def decay_mask(value: Any) -> Any:
  """The ``wd_optax.masks`` mask of a mask field (a preset name, a list of include regexes or a dict).

  The include regexes are compiled by ``wd_optax.masks.include``, the exclude regexes by ``exclude``, both by
  ``all_of``. ``None`` (every parameter) when it has neither, as for ``all``.
  """
  spec = decay_mask_spec(value)
  parts = []
  if spec["include"] is not None:
    parts.append(wd_optax.masks.include(*spec["include"]))
  if spec["exclude"]:
    parts.append(wd_optax.masks.exclude(*spec["exclude"]))
  if not parts:
    return None
  return parts[0] if len(parts) == 1 else wd_optax.masks.all_of(*parts)


MASK = {"mask": True}

# ``decay`` of the sgd, adam and kfac families that applies both placements, each with its own traced rate:
# coupled L2 with ``weight_decay`` and lr-coupled decoupled decay with ``decoupled_weight_decay``. Arms that
# differ only in where λ enters (one of the two rates 0) then share one program.
L2_AND_DECOUPLED = "l2+decoupled"
MIXED_TRACED = ("decoupled_weight_decay",)


def with_decoupled_part(spec, tx, traced, coupling: str = "lr"):
  """``tx`` followed by ``wd_optax.decoupled_decay`` at rate ``decoupled_weight_decay`` (``decay="l2+decoupled"``)."""
  peak = traced["peak_learning_rate"] if coupling in ("schedule", "corrected") else None
  return optax.chain(tx, wd_optax.decoupled_decay(traced["decoupled_weight_decay"], coupling=coupling,
                                                  learning_rate=traced["learning_rate"], peak_learning_rate=peak,
                                                  mask=spec.mask()))


def check_decoupled_part(spec, where) -> None:
  if spec.decoupled_weight_decay and spec.decay != L2_AND_DECOUPLED:
    raise ValueError(f"{where('decoupled_weight_decay')} ({spec.decoupled_weight_decay}) is read only with "
                     f"decay={L2_AND_DECOUPLED!r}; {where('decay')} is {spec.decay!r}.")


def check_cautious(spec, where, decays=("decoupled",)) -> None:
  if spec.cautious and spec.decay not in decays:
    allowed = " or ".join(repr(d) for d in decays)
    raise ValueError(f"{where('cautious')} is read only with decay={allowed} (it masks a decoupled decay step); "
                     f"{where('decay')} is {spec.decay!r}.")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """Fields every optimizer family has: the learning rate and its schedule, λ, when it acts and where.

  Attributes:
    learning_rate: peak η (traced).
    lr_schedule: ``constant`` | ``cosine`` (to 0 at the last step).
    warmup_steps: linear warm-up length.
    lr_norm_sq: scale the step of each scale-invariant layer by ‖w_t‖²/‖w_0‖², its squared norm relative to
      its initial value, recomputed every step (Zhang et al. Z2: an lr schedule η_t ∝ ‖w_t‖² in place of decay
      keeps each layer's effective learning rate η_t/‖w_t‖² on the path of the base schedule); the other
      parameters keep the base schedule. Applied by the harness's step, for every family.
    weight_decay: λ (traced).
    decay_mask: which parameters decay, as regexes over their "/"-joined paths (``conv/kernel``,
      ``layers/0/bias``; see ``wd_optax.masks``): a preset name of :data:`DECAY_MASK_PRESETS` (``all`` |
      ``kernels`` | ``conv``: all but the classifier | ``classifier`` | ``none``), a list of include regexes
      (``[".*kernel$"]``) or a dict ``{"include": [...], "exclude": [...]}`` (either key optional: no
      ``include`` means every parameter). A parameter decays when its path matches an include regex
      (:func:`re.search`) and no exclude regex. From the CLI as JSON:
      ``--set optim.decay_mask='{"include": ["kernel$"], "exclude": ["classifier"]}'``. A regex that matches no
      parameter of the model is an error when the run is checked.
    decay_start: first step (as a fraction of ``train.steps``) at which λ acts (traced).
    decay_end: first step (fraction of ``train.steps``) at which λ stops acting; ``decay_start=0, decay_end=1``
      is decay throughout, ``0, 0.25`` early decay, ``0.5, 1`` late decay (traced).
  """
  NAME: ClassVar[str] = ""
  TRACED: ClassVar[tuple[str, ...]] = ("learning_rate", "weight_decay", "decay_start", "decay_end")
  #: Keyword under which the transform's ``update`` takes the population's shared step count (unbatched under
  #: ``jax.vmap``), or ``None``: the harness passes it only to families that name one.
  SHARED_STEP_ARG: ClassVar[str | None] = None
  # Traced decay rates, multiplied by the decay window's 0/1 gate at every step.
  GATED: ClassVar[tuple[str, ...]] = ("weight_decay",)
  # "adam" or "sgd": how the diagnostics read η_eff (η/‖w‖² for SGD, η/‖w‖ for Adam-type updates).
  KIND: ClassVar[str] = "sgd"

  learning_rate: float = dataclasses.field(default=0.1, metadata=NONNEGATIVE)
  lr_schedule: str = dataclasses.field(default="constant", metadata=choices(*LR_SCHEDULES))
  warmup_steps: int = 0
  lr_norm_sq: bool = False
  weight_decay: float = dataclasses.field(default=0.0, metadata=NONNEGATIVE)
  decay_mask: Any = dataclasses.field(default="all", metadata=MASK)
  decay_start: float = dataclasses.field(default=0.0, metadata=FRACTION)
  decay_end: float = dataclasses.field(default=1.0, metadata=FRACTION)

  # --- what a family provides --------------------------------------------------------------------------
  def build(self, traced: Rates) -> optax.GradientTransformation:
    """The transform of one step: static fields from ``self``, this step's traced values from ``traced``."""
    raise NotImplementedError(f"optimizer family {self.NAME!r} defines no build()")

  def value_and_grad(self, loss_fn, params, batch, key, model) -> GradResult:
    """Loss and gradients of one member's step (default: ``jax.value_and_grad`` of ``loss_fn``).

    Args:
      loss_fn: ``loss_fn(params) -> (loss, (logits, model_state))``, the training loss of pure params.
      params: the member's parameters.
      batch: ``(x, y)``.
      key: the step's PRNG key.
      model: the member's model (``experiments.train.step.MemberModel``): ``model.module(params)`` is the
        ``nnx.Module`` with the member's state, ``model.loss(module, batch) -> (loss, logits)`` the same
        training loss on it, ``model.state(module)`` its non-parameter state as a pure dict. A family that
        needs more than gradients (K-FAC's curvature) computes it here, in the same pass.
    """
    del batch, key, model
    (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return GradResult(loss, logits, model_state, grads, {})

  def bind(self, model, mesh=None) -> "OptimizerSpec":
    """The spec with what the family reads from the (abstract) ``nnx.Module`` and the program's device mesh
    (``experiments.train.sharding``; ``None``: not known, e.g. when a config is checked) filled in (default:
    itself)."""
    del model, mesh
    return self

  def diagnostics(self, opt_state, params) -> dict:
    """Scalars of the optimizer state to log beside the harness's diagnostics (default: none)."""
    del opt_state, params
    return {}

  def check(self, where) -> None:
    """Checks across fields (``where(field)`` names the config key that set ``field``); per-field checks are
    declared in the fields' metadata."""
    del where

  # --- shared machinery ----------------------------------------------------------------------------------
  @property
  def name(self) -> str:
    return self.NAME

  @classmethod
  def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]

  @classmethod
  def field_type(cls, name: str) -> Any:
    return typing.get_type_hints(cls).get(name, Any)

  def traced_values(self) -> dict[str, float]:
    return {k: float(getattr(self, k)) for k in self.TRACED}

  def static_key(self) -> tuple:
    """The family and its static fields: arms with equal keys train as one vmapped program."""
    import json  # pylint: disable=g-import-not-at-top
    return (self.NAME,) + tuple((f.name, json.dumps(getattr(self, f.name), sort_keys=True))
                                for f in dataclasses.fields(self) if f.name not in self.TRACED)

  def to_dict(self) -> dict:
    return {"name": self.NAME, **dataclasses.asdict(self)}

  def lr_shape(self, total_steps: int) -> optax.Schedule:
    """Shape of the learning-rate schedule (peak 1), an optax schedule of the step count.

    ``constant``: 1; ``cosine``: ½(1 + cos(π·(t − W)/(T − W))) from step W = ``warmup_steps`` to T =
    ``total_steps`` (0 from T on). With W > 0 the first W steps are a linear warm-up (t + 1)/W, reaching 1 at
    step W − 1 (``optax.linear_schedule``), joined to the rest at step W (``optax.join_schedules``).

    The cosine is ``optax.cosine_decay_schedule`` with ``decay_steps=1`` evaluated at the fraction of the decay
    done, (t − W)/(T − W): it then computes π·((t − W)/(T − W)), bit for bit what the harness computed before
    it used optax, where ``decay_steps=T − W`` at t − W would compute π·(t − W)/(T − W), one float32 ulp off at
    a third of the steps, and change every published run in its last digits.
    """
    if self.lr_schedule == "constant":
      main = optax.constant_schedule(1.0)
    elif self.lr_schedule == "cosine":
      span = max(total_steps - self.warmup_steps, 1)
      unit_cosine = optax.cosine_decay_schedule(1.0, decay_steps=1)
      main = lambda count: unit_cosine(jnp.asarray(count, jnp.float32) / span)
    else:
      raise ValueError(f"optim.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
    warmup = self.warmup_steps
    if warmup == 0:
      return main
    return optax.join_schedules([optax.linear_schedule(1.0 / warmup, 1.0, warmup - 1), main], [warmup])

  @staticmethod
  def decay_window(hp: Rates, total_steps: int) -> optax.Schedule:
    """The 0/1 gate ``wd_optax.schedules.window`` of a member's decay window.

    Its edges are the steps round(``decay_start``·T) and round(``decay_end``·T), T = ``total_steps``: traced,
    so arms that only differ in when decay acts (none / always / early / late) share one vmapped program.
    """
    first = jnp.round(hp["decay_start"] * total_steps).astype(jnp.int32)
    stop = jnp.round(hp["decay_end"] * total_steps).astype(jnp.int32)
    return wd_optax.schedules.window(1.0, first, stop)

  def rates_at(self, hp: Rates, step: jax.Array, total_steps: int) -> dict[str, jax.Array]:
    """The traced values of one member at ``step``: η_t, the gated decay rates, the rest unchanged.

    Also ``peak_learning_rate``: η itself (for the ``schedule`` and ``corrected`` decay couplings).
    """
    out = {k: hp[k] for k in self.TRACED if k not in ("decay_start", "decay_end")}
    out["learning_rate"] = hp["learning_rate"] * self.lr_shape(total_steps)(step)
    gate = self.decay_window(hp, total_steps)(step)
    for key in self.GATED:
      out[key] = hp[key] * gate
    out["peak_learning_rate"] = hp["learning_rate"]
    return out

  def mask(self):
    return decay_mask(self.decay_mask)

  def validate(self, where, sweep: Mapping[str, Any] | None = None, sweep_where: str = "sweep") -> None:
    """Every field's type and range, and each swept value (only traced fields may be swept).

    ``where(field)`` names the config key that set ``field`` (``optim.momentum`` or ``arms.ARM.momentum``).
    """
    sweep = dict(sweep or {})
    hints = typing.get_type_hints(type(self))
    for key, values in sweep.items():
      if key not in self.TRACED:
        raise ValueError(f"{sweep_where}: {key!r} cannot be swept inside one program; the traced fields of "
                         f"optimizer {self.NAME!r}: {self.TRACED}.")
      if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{sweep_where}.{key}: expected a non-empty list, got {values!r}.")
      for value in values:
        _check_field(type(self), key, value, f"{sweep_where}.{key}", hints)
    for f in dataclasses.fields(self):
      if f.name not in sweep:
        _check_field(type(self), f.name, getattr(self, f.name), where(f.name), hints)
    window = [(s, e) for s in sweep.get("decay_start", [self.decay_start])
              for e in sweep.get("decay_end", [self.decay_end]) if s > e]
    if window:
      raise ValueError(f"{where('decay_start')} ({window[0][0]}) must be <= {where('decay_end')} ({window[0][1]}).")
    self.check(where)
    # The cross-field checks also see each swept value (a swept decoupled_weight_decay under decay="l2" would
    # train members that differ in nothing).
    for key, values in sweep.items():
      for value in values:
        dataclasses.replace(self, **{key: value}).check(where)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_field(cls, key: str, value: Any, where: str, hints: dict) -> None:
  field = {f.name: f for f in dataclasses.fields(cls)}[key]
  meta = field.metadata
  tp = hints.get(key, Any)
  if meta.get("mask"):
    decay_mask_spec(value, where)
    return
  if tp is bool and not isinstance(value, bool):
    raise ValueError(f"{where} must be true or false, got {value!r}.")
  if tp is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
    raise ValueError(f"{where} must be an int >= 0, got {value!r}.")
  if tp is float and not _is_number(value):
    raise ValueError(f"{where} must be a number, got {value!r}.")
  if "choices" in meta and value not in meta["choices"]:
    raise ValueError(f"{where} must be one of {meta['choices']}, got {value!r}.")
  if "check" in meta:
    test, expected = meta["check"]
    if not _is_number(value) or not test(value):
      raise ValueError(f"{where} must be {expected}, got {value!r}.")
