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

Optimizers are families of :mod:`experiments.optimizers` (``sgd``, ``adam``, ``adam_buffers``, ``fixnorm``,
``kfac``): an arm names its family and overrides its fields, and ``model`` overrides switch the network (e.g.
``{"norm": None}``). A study that needs a new optimizer adds a family (one file, see docs/harness.md) rather
than a hook. A study may still provide ``hooks(config) -> experiments.train.Hooks``:

* ``eval_metrics(apply, params, model_state, x, y) -> {name: scalar}`` adds measurements to every evaluation
  (logged to metrics.jsonl like test accuracy), e.g. a Jacobian norm.
* ``build_model(rngs=...) -> nnx.Module`` replaces ``experiments.models.build`` for a network the model config
  cannot describe.
* ``make_tx(spec, rates)`` / ``grad_fn(loss_fn, params, batch, key, model)`` replace the family's ``build`` /
  ``value_and_grad`` (for experiments on the harness itself; a new optimizer is better a family).

``Study(optimizers=...)`` lists the families a study accepts, so that a misspelt ``name`` is refused before the
run starts (default: every registered family).

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
    "decay_zoo": "experiments.studies.decay_zoo",
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
  # The optimizer families (``optim.name`` values) the study accepts (``None``: every registered family);
  # validation refuses any other name before a run starts.
  optimizers: tuple[str, ...] | None = None

  def setting_text(self, config) -> str:
    """The setting's description for ``config`` (``setting(config)``, or ``setting`` itself if a string)."""
    return self.setting(config) if callable(self.setting) else self.setting


# Registered studies that ``reproduce`` leaves out (run them by name), with the reason, which the reproduction
# report states. A study leaves this list when its quick form fits the 10-minute budget of all studies together.
NOT_IN_REPRODUCE = {
    "transformer": "its quick form (three programs of a 64-wide decoder, 400 steps, 3 seeds) was not timed on an "
                   "idle 2-core machine yet and may not fit the 10-minute budget; run it with "
                   "`python -m experiments transformer --quick`",
}


def names() -> list[str]:
  return list(REGISTRY)


def reproduced() -> list[str]:
  """The studies ``python -m experiments reproduce`` runs: every registered one but :data:`NOT_IN_REPRODUCE`."""
  return [n for n in REGISTRY if n not in NOT_IN_REPRODUCE]


def get(name: str) -> Study:
  """The study registered as ``name``."""
  if name not in REGISTRY:
    raise KeyError(f"unknown study {name!r}; registered studies: {', '.join(REGISTRY)}.")
  study = importlib.import_module(REGISTRY[name]).STUDY
  if study.name != name:
    raise ValueError(f"{REGISTRY[name]}.STUDY is named {study.name!r}, registered as {name!r}.")
  return study
