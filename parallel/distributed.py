"""Process start-up, before JAX initialises a backend: fake CPU devices (to plan
a mesh on a laptop) and `jax.distributed` for multi-process runs."""
import os

import jax


def multi_process_environment(environ=None):
  """True when a launcher started several processes that must form one JAX job:
  a Slurm step with more than one task, or a multi-host TPU slice."""
  env = os.environ if environ is None else environ
  if int(env.get("SLURM_NTASKS", "1") or "1") > 1:
    return True
  tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
  return len(tpu_hosts) > 1


def initialize(*, num_cpu_devices=0, coordinator_address=None, num_processes=None,
               process_id=None, environ=None):
  """Sets up devices and, when asked or when the environment says so, joins the
  distributed job. Returns True when jax.distributed was initialised.

  Must run before anything touches jax devices (device counts and the CPU
  collectives are fixed when the backend starts).
  """
  if num_cpu_devices:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))
  explicit = (coordinator_address, num_processes, process_id)
  if any(x is not None for x in explicit) and any(x is None for x in explicit):
    raise ValueError(
        "--coordinator_address, --num_processes and --process_id go together: give all "
        "three (e.g. --coordinator_address=10.0.0.1:1234 --num_processes=2 "
        "--process_id=0) or none to detect Slurm/TPU pods from the environment.")
  if explicit[0] is None and not multi_process_environment(environ):
    return False
  # CPU devices of different processes can only exchange data over gloo; the
  # setting is ignored by GPU/TPU backends.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True
