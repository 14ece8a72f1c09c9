"""The Pallas kernels of chunkwise causal linear attention: strictly-past sums.

forward_call computes, per query head and token t (e(t, s) = exp(G_t - G_s)),
  o_t = sum_{s<t} e(t, s) w(t, s) v_s,    w(t, s) = q_t . k_s  [+ qa_t ka_s]
and with `normaliser` also the row sums r_t = sum_{s<t} e(t, s) w(t, s), chunk by
chunk, on kernel layout [B, heads, L, X] with L a multiple of the chunk, the
feature dim F and value dim V multiples of their tiles (linear_chunk.pad_to_tiles).
The s = t terms and every gradient are built from this one kernel in
kernels/linear_pallas.py.

The two extras serve the row normaliser without widening V. r is the forward's
normaliser: what a column of ones appended to v gives, but a ones column costs a
whole value tile (V = 128 became 192 with cuda's 64-wide tiles; on tpu a 129-wide
block). The rank-one score term qa ka^T carries the normaliser's cotangent into
dq and dk, as a ones feature would on the key side. Each has its own float32
accumulator beside the [F, V] state: r the state row z_F = sum_s e k_s (per chunk,
decayed like the state) and the chunk's row sums of the decayed scores; qa ka^T
the state row z_V = sum_s e ka_s v_s and a rank-one update of the chunk's scores.

The chunk's decays are a compensated cumsum, b + lo (kernels/linear_chunk.py: why
a plain float32 cumsum cost the log-decay gradient ~50x in accuracy).

cuda (kernels/linear_gpu.py): fla's chunked form, a state pass (one [BK, BV] state
  tile per program, writing each chunk's entering state h), a scores pass and a
  parallel output pass.
tpu (kernels/linear_tpu.py): grid (B, H, F / BK, V / BV, N), one chunk walk per
  [BK, BV] state tile in VMEM, per-F-tile output shares summed in jnp.
"""
import jax.numpy as jnp

from kernels.linear_chunk import compensated_cumsum
from kernels.linear_gpu import gpu_forward
from kernels.linear_tpu import tpu_forward


def forward_call(q_BXLF, k_BXLF, v_BXLV, g_BHL, *, chunk_size, platform, interpret,
                 squared_from=None, normaliser=False, rank1=None, out_dtype=None,
                 poison=False):
  """Strictly-past o_BHLV, or (o_BHLV, r_BHL float32) with `normaliser`.

  Each operand has the query heads H or a divisor of them (kv heads; query head h
  reads head h // (H / heads)). squared_from: (sq, sk) whose (sq . sk)^2 are the
  scores q . k (the squared map at K wide, not K(K+1)/2). rank1: (qa_BXL, ka_BXL),
  float32, adding qa_t ka_s to the scores (not with `normaliser`). `poison` starts
  every output, intermediate ones included, as NaN.
  """
  if normaliser and rank1 is not None:
    raise ValueError("forward_call takes the normaliser or a rank-one term, not both.")
  b_BHL, lo_BHL = compensated_cumsum(g_BHL, chunk_size)
  square = squared_from is not None
  sq, sk = squared_from if square else (q_BXLF, k_BXLF)
  if rank1 is not None:
    rank1 = tuple(x.astype(jnp.float32) for x in rank1)
  call = tpu_forward if platform == "tpu" else gpu_forward
  o, r = call(q_BXLF, k_BXLF, v_BXLV, b_BHL, lo_BHL, sq, sk, square, rank1, normaliser,
              out_dtype or v_BXLV.dtype, chunk_size, interpret, poison)
  return (o, r) if normaliser else o
