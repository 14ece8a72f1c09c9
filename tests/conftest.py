"""Test setup: 8 fake CPU devices for the multi-device tests (set before JAX starts)."""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

import pytest  # noqa: E402

from tests.helpers import micro_config  # noqa: E402


@pytest.fixture
def micro_cfg():
  return micro_config
