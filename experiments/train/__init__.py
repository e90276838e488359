"""The training harness: a pure jitted step, a vmapped population of runs, data parallelism over a device
mesh, orbax checkpoints, on-device metrics written as JSON lines, and plots.

Modules: :mod:`~experiments.train.population` (members and groups), :mod:`~experiments.train.step` (one
member's step and the scanned population chunk), :mod:`~experiments.train.evaluate` (the evaluation
programs), :mod:`~experiments.train.program` (the model as pure functions and one group's jitted programs
and state), :mod:`~experiments.train.loop` (the host loop: NaN policy, evaluation cadence, checkpoints,
metrics, progress), :mod:`~experiments.train.workdir` (every group of a config in a work directory),
:mod:`~experiments.train.optim`, :mod:`~experiments.train.sharding`, :mod:`~experiments.train.feed` (host-fed
batches), :mod:`~experiments.train.checkpoint`, :mod:`~experiments.train.metrics`,
:mod:`~experiments.train.progress` and :mod:`~experiments.train.plots`.

Entry points: :func:`experiments.train.workdir.run_experiment` trains every arm of an
:class:`~experiments.config.ExperimentConfig` in a work directory; :class:`Program` trains one group of
structurally identical arms and is what the tests and benchmarks drive directly.
"""

from experiments.train.loop import TrainingDiverged
from experiments.train.metrics import ArmResult, MetricsWriter, load_results, read_records
from experiments.train.population import Group, Member, make_groups
from experiments.train.program import Hooks, Model, Program
from experiments.train.step import GradResult, StepSpec, default_grad_fn

__all__ = [
    "ArmResult",
    "GradResult",
    "Group",
    "Hooks",
    "Member",
    "MetricsWriter",
    "Model",
    "Program",
    "StepSpec",
    "TrainingDiverged",
    "default_grad_fn",
    "load_results",
    "make_groups",
    "read_records",
]
