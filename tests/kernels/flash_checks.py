"""Shared checks for the Pallas flash kernels: fresh random inputs, relative
errors of outputs and gradients against a float32 reference."""
import jax
import jax.numpy as jnp
import numpy as np

# Interpreted (CPU) kernels match the float32 reference to 1e-5; compiled ones
# (tests/conftest.py's CHINCHAX_TEST_INTERPRET=0) may run float32 dots inside the
# kernel as TF32 or bf16 passes.
TOLERANCE = {jnp.float32: 1e-5 if jax.default_backend() == "cpu" else 2e-3,
             jnp.bfloat16: 2e-2}


def fresh_seed():
  return int(np.random.default_rng().integers(2**31))


def random_qkvo(seed, batch, seq_len, num_heads, num_kv_heads, head_dim, dtype):
  """q, k, v and an output cotangent, rounded to dtype."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  heads = (num_heads, num_kv_heads, num_kv_heads, num_heads)
  return [jax.random.normal(key, (batch, seq_len, h, head_dim)).astype(dtype)
          for key, h in zip(keys, heads)]


def compile_fast(fn, *args):
  """Runs jit(fn) compiled without XLA's CPU optimisations: interpret-mode
  kernels are compile-bound, and these tests only need correct numbers."""
  if jax.default_backend() != "cpu":  # compiled kernels: the options are CPU-only
    return jax.jit(fn)(*args)
  options = {"xla_backend_optimization_level": 0,
             "xla_llvm_disable_expensive_passes": True}
  return jax.jit(fn).lower(*args).compile(options)(*args)


def jaxpr_eqns(fn, *args):
  """Every equation of fn's jaxpr, sub-jaxprs included (a pallas_call's kernel body
  is not: its equations run inside the kernel)."""
  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn
      if eqn.primitive.name == "pallas_call":
        continue
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
          if hasattr(sub, "eqns"):
            yield from walk(sub)
  return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def pallas_calls(fn, *args):
  """The pallas_call equations of fn's jaxpr (forward and backward)."""
  return [eqn for eqn in jaxpr_eqns(fn, *args) if eqn.primitive.name == "pallas_call"]


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def assert_matches_reference(kernel_fn, reference_fn, q, k, v, do, seed):
  """Output and (dq, dk, dv) of kernel_fn within the dtype's relative tolerance.

  The reference runs in float32 on the same (rounded) inputs. Interpret mode
  fills unwritten output blocks with NaN, so the finiteness check catches any
  tile a kernel forgets to write.
  """
  tol = TOLERANCE[q.dtype.type]

  def outputs_and_grads(q, k, v, do):
    out, vjp = jax.vjp(kernel_fn, q, k, v)
    f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
    ref_out, ref_vjp = jax.vjp(reference_fn, *f32[:3])
    return (out, *vjp(do)), (ref_out, *ref_vjp(f32[3]))

  (out, *grads), (ref_out, *ref_grads) = compile_fast(outputs_and_grads, q, k, v, do)
  for name, x, ref in zip(("o", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
    assert x.dtype == q.dtype, (name, x.dtype)
    assert bool(jnp.all(jnp.isfinite(x))), f"{name} has unwritten (NaN) blocks; seed {seed}"
    err = rel_err(x, ref)
    assert err < tol, f"{name} rel err {err:.2e} >= {tol}; seed {seed}"
