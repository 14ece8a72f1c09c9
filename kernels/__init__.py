"""Attention kernels: Pallas kernels, XLA paths and pure-jnp references.

The kind registry (kernels.kinds) imports no JAX; the other names load on first use.
"""
from kernels.kinds import KINDS, KIND_PARAMS, KindSpec, register
from kernels.lazy import loader

_EXPORTS = {"attention": "kernels.dispatch", "IMPLS": "kernels.dispatch",
            "attention_density": "kernels.sparse", "block_mask": "kernels.sparse",
            "block_sparse_attention": "kernels.block_sparse",
            "flash_attention": "kernels.flash"}

__all__ = sorted(_EXPORTS) + ["KINDS", "KIND_PARAMS", "KindSpec", "register"]
__getattr__ = loader(__name__, _EXPORTS)
