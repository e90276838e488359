"""Test configuration shared by the whole suite.

XLA reads ``XLA_FLAGS`` once, when jax first initialises its backends, so the eight simulated CPU devices
that the sharding tests need are requested here, before any test module imports jax, together with
single-threaded Eigen (XLA's multithreaded CPU Eigen pool was seen to deadlock on vmapped populations, see
experiments/__init__.py) and unoptimised XLA:CPU code generation (below).
"""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if "xla_cpu_multi_thread_eigen" not in _flags:
  _flags += " --xla_cpu_multi_thread_eigen=false"
# The suite is bound by XLA compiles of tiny programs, and LLVM's optimisation passes are most of a compile:
# without them a file like test_execution.py takes half the CPU time. The compared programs of a test are all
# built with the same flags (the subprocess tests pass them on), so bit-identity checks keep their meaning;
# WD_OPTAX_TEST_XLA_OPTIMIZE=1 runs the suite with XLA's default optimisation instead.
if "xla_backend_optimization_level" not in _flags and not os.environ.get("WD_OPTAX_TEST_XLA_OPTIMIZE"):
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS is set)

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
  # The tests call ``nnx.as_pure``, the name flax >= 0.12.7 gives it; flax 0.12.6, the oldest version
  # the [kfac] extra supports (scripts/test_oldest.sh), has the same function as ``nnx.pure``. flax is
  # imported here only in that case (its version is read from the metadata): the suite's other runs do
  # not load flax before a test module does, and the library's tests run without flax installed.
  import importlib.metadata
  try:
    version = importlib.metadata.version("flax")
  except importlib.metadata.PackageNotFoundError:
    return
  if tuple(int(part) for part in version.split(".")[:3] if part.isdigit()) < (0, 12, 7):
    from flax import nnx
    if not hasattr(nnx, "as_pure") and hasattr(nnx, "pure"):
      nnx.as_pure = nnx.pure
