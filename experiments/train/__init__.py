"""The training harness: a pure jitted step, a vmapped population of runs, data parallelism over a device
mesh, orbax checkpoints, on-device metrics written as JSON lines, and plots.

Entry points: :func:`experiments.train.run.run_experiment` trains every arm of an
:class:`~experiments.config.ExperimentConfig` in a work directory; :class:`Program` trains one group of
structurally identical arms and is what the tests and benchmarks drive directly.
"""

from experiments.train.metrics import ArmResult, MetricsWriter, load_results, read_records
from experiments.train.step import GradResult, StepSpec, default_grad_fn
from experiments.train.trainer import Group, Hooks, Member, Program, TrainingDiverged, make_groups

__all__ = [
    "ArmResult",
    "GradResult",
    "Group",
    "Hooks",
    "Member",
    "MetricsWriter",
    "Program",
    "StepSpec",
    "TrainingDiverged",
    "default_grad_fn",
    "load_results",
    "make_groups",
    "read_records",
]
