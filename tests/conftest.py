"""Test configuration shared by the whole suite.

XLA reads ``XLA_FLAGS`` once, when jax first initialises its backends, so the eight simulated CPU devices
that the sharding tests need are requested here, before any test module imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS is set)

jax.config.update("jax_default_matmul_precision", "highest")
