"""Test setup: 8 fake CPU devices for the multi-device tests (set before JAX starts)."""
import os
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One persistent compilation cache per test session, shared by the xdist workers and
# every subprocess they start (env is inherited): most test time is XLA compiling
# programs that other tests already compiled. A cached executable is the one XLA would
# build, so results do not change.
_SESSION = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"chinchax-tests-jax-cache-{_SESSION}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

import pytest  # noqa: E402

from tests.helpers import micro_config  # noqa: E402


@pytest.fixture
def micro_cfg():
  return micro_config
