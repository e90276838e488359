"""The study registry: one module per study, one line per study in :data:`REGISTRY`.

A study is a :class:`Study`: a config factory (``make_config(quick) -> ExperimentConfig``: data, model,
steps, seeds and the list of arms, i.e. named optimizer configs) and an analysis
(``analyze(results, config) -> (claims, table)``) that turns the per-arm metrics read from
``metrics.jsonl`` into :class:`experiments.report.Claim` s: the prediction, the effect with its 95%
interval over seeds, and the verdict. Every claim names the arms it compared
(``compared=_common.health(results, config, ...)``) and, for a best-of-sweep comparison, the picks on the
edge of their grid (``edges=_common.best_of_sweep(...).edges``): ``experiments.report`` then marks it
*invalid* when all of them diverged or sit at chance, and *inconclusive* when an optimum is not bracketed.

To add a study (e.g. ``fixnorm`` for issue 5, ``three_mechanisms`` for issue 6):

1. Write ``experiments/studies/<name>.py`` ending in ``STUDY = Study(name=..., title=..., setting=...,
   make_config=..., analyze=...)``. ``setting`` is the report's description of the design; make it a function
   ``setting(config) -> str`` that reads its numbers (steps, seeds, grids, η, λ, probes, thresholds) from the
   config and the study's constants, so the text says what ran (a plain string is accepted too). Keep the ``quick=True`` config to about a minute on 2 CPU cores:
   ``reproduce --quick`` runs every registered study and must finish in 10 minutes.
2. Add ``"<name>": "experiments.studies.<name>"`` to :data:`REGISTRY`.

A study whose optimizer is not one of ``OptimConfig.name`` (FixNorm's norm projection, K-FAC) provides
``hooks(config) -> experiments.train.Hooks``:

* ``make_tx(optim_config, rates) -> optax.GradientTransformation`` builds the transform of one step from
  the step's rates (η_t, λ_t as traced scalars, see ``experiments.train.optim.rates_at``); its state must
  have the same structure for every step. ``rates`` also holds the study-hook fields of
  ``experiments.config.TRACED_FIELDS`` (FixNorm's ``classifier_norm``, three_mechanisms' ``batch_norm`` and
  ``decoupled_fraction``), so arms that differ only in them train as one program. A study that needs
  another per-arm number adds a documented field to ``OptimConfig``, ``TRACED_FIELDS`` and ``rates_at``
  (with a range check in ``experiments.config.validate`` if it has one) rather than reusing a field
  meant for something else.
* ``grad_fn(loss_fn, params, batch, key) -> experiments.train.GradResult`` computes the loss and gradients
  (``loss_fn(params) -> (loss, (logits, model_state))``) and returns ``extra``: keyword arguments passed
  to ``tx.update(grads, state, params, **extra)``. K-FAC returns its curvature statistics here
  (``extra={"curvature": ...}``), computed with its own value-and-grad function (e.g. sampled-target
  backward passes through registered layers).

* ``eval_metrics(apply, params, model_state, x, y) -> {name: scalar}`` adds measurements to every evaluation
  (logged to metrics.jsonl like test accuracy), e.g. a Jacobian norm.
* ``build_model(rngs=...) -> nnx.Module`` replaces ``experiments.models.build`` (e.g. to pass K-FAC-registered
  ``linear_cls`` / ``conv_cls``).

A study whose ``make_tx`` accepts other ``optim.name`` values than the harness's lists them all in
``Study(optimizers=...)``, so that a misspelt name is refused before the run starts.

Optional: ``plots(results, config, outdir) -> [png paths]`` for study-specific figures (the harness always
draws accuracy, loss, norm and angular-update curves).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

REGISTRY: dict[str, str] = {
    "early_decay": "experiments.studies.early_decay",
    "decay_placement": "experiments.studies.decay_placement",
    "adam_buffers": "experiments.studies.adam_buffers",
    "fixnorm": "experiments.studies.fixnorm",
    "three_mechanisms": "experiments.studies.three_mechanisms",
    "transformer": "experiments.studies.transformer",
}


@dataclasses.dataclass(frozen=True)
class Study:
  """A registered study; see the module docstring."""
  name: str
  title: str
  setting: str | Callable[[Any], str]
  make_config: Callable[[bool], Any]
  analyze: Callable[..., Any]
  hooks: Callable[[Any], Any] | None = None
  plots: Callable[..., list] | None = None
  # The ``optim.name`` values the study's ``make_tx`` hook builds (``None``: the harness's
  # ``experiments.config.OPTIMIZERS``); validation refuses any other name before a run starts.
  optimizers: tuple[str, ...] | None = None

  def setting_text(self, config) -> str:
    """The setting's description for ``config`` (``setting(config)``, or ``setting`` itself if a string)."""
    return self.setting(config) if callable(self.setting) else self.setting


def names() -> list[str]:
  return list(REGISTRY)


def get(name: str) -> Study:
  """The study registered as ``name``."""
  if name not in REGISTRY:
    raise KeyError(f"unknown study {name!r}; registered studies: {', '.join(REGISTRY)}.")
  study = importlib.import_module(REGISTRY[name]).STUDY
  if study.name != name:
    raise ValueError(f"{REGISTRY[name]}.STUDY is named {study.name!r}, registered as {name!r}.")
  return study
