"""Attention kernels: Pallas kernels, XLA paths and pure-jnp references."""
from kernels.attention import attention, KINDS, IMPLS, KIND_PARAMS

__all__ = ["attention", "KINDS", "IMPLS", "KIND_PARAMS"]
