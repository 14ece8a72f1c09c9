"""Dense flash attention (Pallas), forward and backward kernels.

Dense attention is the block-sparse kernel over every causally reachable tile
(all tiles when non-causal): the tile lists are numpy constants built at trace
time, tiles inside the causal region skip the elementwise mask, and GQA reads
kv head h // (H // G) through the index maps. See kernels.block_sparse.

With segment ids (packed documents) the lists depend on the data: they are
built at run time from the blocks that may share a segment, so tiles between
different documents are never loaded, and every computed tile is masked.
"""
from kernels import block_sparse, flash_lists
from kernels.platform import resolve_platform


def flash_attention(q_BLHK, k_BLGK, v_BLGK, *, causal=True, segment_ids_BL=None,
                    block_q=128, block_k=128, interpret=None, platform=None):
  """Softmax attention via Pallas flash kernels; q [B, L, H, K], k/v [B, L, G, K].

  segment_ids_BL (int [B, L], optional): query i sees key j only if their ids
  are equal (document masking); rows that see no key return 0.
  Blocks larger than the sequence shrink to it; otherwise seq_len must be a
  multiple of both block sizes. interpret=None interprets on a CPU backend;
  platform ("tpu" | "cuda" | None = from the backend) picks the kernel variant.
  """
  platform, interpret = resolve_platform(platform, interpret)
  seq_len = q_BLHK.shape[1] if q_BLHK.ndim == 4 else 0
  block_q, block_k = min(block_q, seq_len), min(block_k, seq_len)
  block_sparse.check_inputs(q_BLHK, k_BLGK, v_BLGK, block_q, block_k, platform,
                            interpret)
  if segment_ids_BL is None:
    lists = flash_lists.dense_lists(seq_len, block_q, block_k, causal)
  else:
    block_sparse.check_segment_ids(segment_ids_BL, q_BLHK)
    block_mask = block_sparse.segmented_block_mask(None, segment_ids_BL, block_q,
                                                   block_k, causal=causal)
    lists = flash_lists.from_block_mask(block_mask, causal=causal, segmented=True)
  return block_sparse.run_lists(q_BLHK, k_BLGK, v_BLGK, lists, platform=platform,
                                interpret=interpret, segment_ids_BL=segment_ids_BL)
