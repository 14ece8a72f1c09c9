"""Attention kernels: Pallas kernels, XLA paths and pure-jnp references."""
from kernels.attention import attention, KINDS, IMPLS, KIND_PARAMS
from kernels.block_sparse import block_sparse_attention
from kernels.flash import flash_attention
from kernels.sparse import attention_density, block_mask

__all__ = ["attention", "KINDS", "IMPLS", "KIND_PARAMS", "attention_density", "block_mask",
           "block_sparse_attention", "flash_attention"]
