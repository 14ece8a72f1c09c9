"""Test setup: 8 fake CPU devices for the multi-device tests (set before JAX starts).

CHINCHAX_TEST_INTERPRET=0 (benchmarks/accelerator_suite.py's tests stage, on a GPU or
TPU) is the one switch for compiled kernel tests: the default backend is kept, every
Pallas kernel compiles instead of interpreting (the tests' interpret=True included),
and the tests of the other platform's variants or of interpret mode itself skip.
Multi-device tests need the CPU setting; run only tests/kernels with it.
"""
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

COMPILED = os.environ.get("CHINCHAX_TEST_INTERPRET", "1") == "0"
if COMPILED:
  from jax.experimental import pallas as _pl

  _pallas_call = _pl.pallas_call

  def _compiled_pallas_call(*args, interpret=False, **kwargs):
    del interpret  # kernels look pl.pallas_call up at call time, so this covers all
    return _pallas_call(*args, interpret=False, **kwargs)

  _pl.pallas_call = _compiled_pallas_call

  # The kernels' shape checks differ when interpreting, so the resolved flag is forced
  # too: every kernels module that imported resolve_platform gets the compiled one.
  import importlib
  import pkgutil

  import kernels
  from kernels import platform as _platform

  _resolve = _platform.resolve_platform

  def _compiled_resolve(platform=None, interpret=None):
    return _resolve(platform, False)

  for _info in pkgutil.iter_modules(kernels.__path__):
    _module = importlib.import_module(f"kernels.{_info.name}")
    if getattr(_module, "resolve_platform", None) is _resolve:
      _module.resolve_platform = _compiled_resolve
  jax.config.update("jax_default_matmul_precision", "highest")  # exact references
else:
  jax.config.update("jax_num_cpu_devices", 8)
  jax.config.update("jax_platforms", "cpu")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
  if not COMPILED:
    return
  native = "tpu" if jax.default_backend() == "tpu" else "cuda"
  for item in items:
    platform = getattr(getattr(item, "callspec", None), "params", {}).get("platform")
    if "interpret" in item.name:
      item.add_marker(pytest.mark.skip(reason="tests interpret mode itself"))
    elif platform not in (None, native) and "export" not in item.path.name:
      item.add_marker(pytest.mark.skip(reason=f"{platform} variant; backend runs {native}"))

from tests.helpers import micro_config  # noqa: E402


@pytest.fixture
def micro_cfg():
  return micro_config
