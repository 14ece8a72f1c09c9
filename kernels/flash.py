"""Dense flash attention (Pallas), forward and backward kernels.

Dense attention is the block-sparse kernel over every causally reachable tile
(all tiles when non-causal): the tile lists are numpy constants built at trace
time, tiles inside the causal region skip the elementwise mask, and GQA reads
kv head h // (H // G) through the index maps. See kernels.block_sparse.

With segment ids (packed documents) the lists depend on the data: they are
built at run time from the blocks that may share a segment, so tiles between
different documents are never loaded, and every computed tile is masked.
"""
from kernels import block_sparse, flash_lists, padding
from kernels.platform import resolve_platform


def flash_attention(q_BLHK, k_BLGK, v_BLGK, *, causal=True, segment_ids_BL=None,
                    block_q=128, block_k=128, bwd_block_q=None, bwd_block_k=None,
                    fused_bwd=False, interpret=None, platform=None):
  """Softmax attention via Pallas flash kernels; q [B, L, H, K], k/v [B, L, G, K].

  segment_ids_BL (int [B, L], optional): query i sees key j only if their ids
  are equal (document masking); rows that see no key return 0.
  Any seq_len: blocks larger than the sequence shrink to it (to a power of two
  >= 16 where the kernel tiling needs one), and a length the blocks do not
  divide is padded and masked (kernels.padding). bwd_block_q / bwd_block_k
  (None: the forward's): the backward kernels' tiles, dividing the blocks (larger
  ones are the blocks).
  fused_bwd: one fused backward kernel instead of dq and dk/dv (block_sparse.run_lists).
  interpret=None interprets on a
  CPU backend; platform ("tpu" | "cuda" | None = from the backend) picks the
  kernel variant.
  """
  platform, interpret = resolve_platform(platform, interpret)
  seq_len = q_BLHK.shape[1] if q_BLHK.ndim == 4 else 0
  block_q = _fit_block(block_q, seq_len, platform, interpret)
  block_k = _fit_block(block_k, seq_len, platform, interpret)
  # Dense lists gain nothing from tiles over several blocks (set larger blocks): a
  # larger backward tile is the block, as when the block shrank to a short sequence.
  bwd_block_q = bwd_block_q and min(bwd_block_q, block_q)
  bwd_block_k = bwd_block_k and min(bwd_block_k, block_k)
  padded = padding.padded_length(seq_len, block_q, block_k) if seq_len else 0
  if padded != seq_len:
    own_segment = padding.needs_own_segment(causal, segment_ids_BL)
    if segment_ids_BL is not None:
      block_sparse.check_segment_ids(segment_ids_BL, q_BLHK)
    q, k, v, seg = padding.pad_inputs(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, padded,
                                      own_segment=own_segment)
    o_BLHK = flash_attention(q, k, v, causal=causal, segment_ids_BL=seg, block_q=block_q,
                             block_k=block_k, bwd_block_q=bwd_block_q,
                             bwd_block_k=bwd_block_k, fused_bwd=fused_bwd,
                             interpret=interpret, platform=platform)
    return o_BLHK[:, :seq_len]
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
                                interpret=interpret, segment_ids_BL=segment_ids_BL,
                                bwd_block_q=bwd_block_q, bwd_block_k=bwd_block_k,
                                fused_bwd=fused_bwd)


def _fit_block(block, seq_len, platform, interpret):
  """`block`, or for a shorter sequence the sequence itself when the platform's
  tiling takes it, else the power of two >= 16 that covers it (then padded)."""
  if not seq_len or seq_len >= block:
    return block
  if seq_len in block_sparse.valid_blocks(seq_len, platform, interpret):
    return seq_len
  return min(block, max(16, 1 << (seq_len - 1).bit_length()))
