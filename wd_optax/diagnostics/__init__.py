"""Diagnostics: the quantities through which weight decay acts, cheap enough to log while training.

Per-leaf results are pytrees shaped like the parameters (``None`` for leaves outside a mask); turn
them into ``{path: value}`` dicts for logging with :func:`flatten_by_path`. See docs/papers.md §4 and §7.
"""

from wd_optax.diagnostics.boundary import cross_boundary_risk
from wd_optax.diagnostics.equilibrium import equilibrium_gradient_to_weight_ratio
from wd_optax.diagnostics.equilibrium import equilibrium_norm
from wd_optax.diagnostics.equilibrium import gradient_to_weight_ratio
from wd_optax.diagnostics.jacobian import JacobianNormEstimate
from wd_optax.diagnostics.jacobian import gauss_newton_norm
from wd_optax.diagnostics.jacobian import jacobian_norm
from wd_optax.diagnostics.norms import angular_update
from wd_optax.diagnostics.norms import effective_learning_rate
from wd_optax.diagnostics.norms import equilibrium_angular_update
from wd_optax.diagnostics.norms import flatten_by_path
from wd_optax.diagnostics.norms import weight_norms
from wd_optax.diagnostics.sharpness import SharpnessEstimate
from wd_optax.diagnostics.sharpness import fixed_radius_sharpness
from wd_optax.diagnostics.sharpness import scale_invariant_sharpness
from wd_optax.diagnostics.sharpness import spectral_norm_product
from wd_optax.diagnostics.sharpness import sum_of_squared_norms

# FixNorm's cross-boundary risk is re-exported here by wd_optax.diagnostics.boundary.
