"""Which Pallas kernel variant runs, and whether it is interpreted.

Every Pallas kernel here has a "tpu" (Mosaic) and a "cuda" (Triton) variant.
platform=None follows the default backend: "tpu" on TPU, "cuda" on GPU, and
"cuda" on CPU, where the kernels only run interpreted (interpret=None means
interpreted iff the backend is CPU). On CPU the choice is deliberate: both
variants are tested interpreted, and the cuda ones walk the sequence in a loop
inside one program per (batch, head), so fewer interpreted grid steps. Lowering
for a real target from a CPU host names it: platform="tpu" or "cuda" with
interpret=False (tests/kernels/test_export.py, test_linear_export.py).
"""
import jax

PLATFORMS = ("tpu", "cuda")


def resolve_platform(platform=None, interpret=None):
  """-> (kernel variant "tpu" | "cuda", interpret flag)."""
  backend = jax.default_backend()
  if interpret is None:
    interpret = backend == "cpu"
  if platform is None:
    platform = "tpu" if backend == "tpu" else "cuda"
  if platform in ("gpu", "rocm"):
    platform = "cuda"
  if platform not in PLATFORMS:
    raise ValueError(f"unknown Pallas platform {platform!r}; choose one of {PLATFORMS} "
                     "or None (from the default backend).")
  return platform, bool(interpret)
