"""`kernels.attention` under a mesh: shard_map with specs from the rules table.

Pallas kernels do not partition themselves, so under a multi-device mesh the
kernel runs inside `jax.shard_map` on per-device blocks: batch split like the
`batch` rule (data, fsdp), heads like the `heads` rule (tensor). With the
`length` rule active (sequence > 1, context parallelism), an all-to-all
(DeepSpeed-Ulysses) trades the sequence shards for head shards before the
kernel and back after it, so every attention kind sees whole sequences and
needs no cross-device logic of its own. Under `mesh.context="untied"` that exchange
runs `mesh.head_chunks` heads at a time (parallel/context.py), so only one chunk
of heads is resident at full sequence length.
"""
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

import kernels
from parallel import context as context_lib, rules as rules_lib


def _axes(entry, mesh):
  """Mesh axes of a spec entry, without size-1 axes (no collectives for those)."""
  axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return tuple(a for a in axes if mesh.shape[a] > 1)


def _entry(axes):
  return None if not axes else axes[0] if len(axes) == 1 else axes


def _size(mesh, axes):
  return math.prod(mesh.shape[a] for a in axes)


def _kv_repeats(kv_heads, shards):
  """How often to repeat each kv head so the kv heads split evenly into `shards`
  (1 when they already do). lcm(kv_heads, shards) divides the query heads (both
  do), so every query head still finds its own kv head on its device."""
  return math.lcm(kv_heads, shards) // kv_heads


def _check(q_BLHK, mesh, batch_axes, seq_axes, head_axes, context):
  B, L, H, _ = q_BLHK.shape
  if B % _size(mesh, batch_axes):
    raise ValueError(
        f"attention batch {B} is not divisible by the mesh axes {batch_axes} "
        f"(size {_size(mesh, batch_axes)}) that the `batch` rule splits it over; "
        "choose batch_size and mesh.data/mesh.fsdp so that it divides.")
  if L % _size(mesh, seq_axes):
    raise ValueError(
        f"sequence length {L} is not divisible by the mesh axes {seq_axes} "
        f"(size {_size(mesh, seq_axes)}) that the `length` rule splits it over; "
        "choose seq_len divisible by mesh.sequence.")
  shards = _size(mesh, head_axes) * _size(mesh, seq_axes)
  if H % shards:
    raise ValueError(
        f"{H} query heads cannot be split over {shards} devices (mesh axes "
        f"{head_axes + seq_axes}: sequence x tensor); heads must be divisible by "
        "mesh.sequence * mesh.tensor. Change model.heads or the mesh.")
  context_lib.check(context, H, shards)


def attention(q_BLHK, k_BLGK, v_BLGK, *, kind, impl="auto", causal=True, **params):
  """`kernels.attention` with the same arguments, partitioned over the active mesh.

  Array parameters whose leading dims are [B, L, H] (e.g. linear attention's
  log_decay [B, L, H]) are split like q; a block mask `mask_BHQK` [B, H, nQ, nK]
  (estimated once, outside) like q's batch and the heads each device attends
  to; segment ids [B, L] like q's batch and sequence (gathered to whole sequences
  on each device); other parameters pass through as is. With return_skipped the
  stage-2 map [B, H, nQ, nK] comes back split like the mask.
  Outside `parallel.activate` or on one device this is `kernels.attention`.
  """
  mesh = rules_lib.active_mesh()
  if mesh is None or mesh.size == 1:
    return kernels.attention(q_BLHK, k_BLGK, v_BLGK, kind=kind, impl=impl,
                             causal=causal, **params)
  spec = rules_lib.spec_for(("batch", "length", "heads"), rules_lib.active_rules(),
                            mesh.axis_names)
  batch_axes, seq_axes, head_axes = (_axes(e, mesh) for e in spec)
  context = context_lib.active()
  _check(q_BLHK, mesh, batch_axes, seq_axes, head_axes, context)
  chunks = context.head_chunks if context.chunked else 1
  # kv heads are split over the same axes as the query heads (not the
  # `kv_heads` rule), so each device holds the kv heads its query heads use;
  # under untied every chunk of them too.
  tensor, sequence = _size(mesh, head_axes), _size(mesh, seq_axes)
  repeats = _kv_repeats(k_BLGK.shape[2], tensor * sequence * chunks)
  if repeats > 1:
    k_BLGK = jnp.repeat(k_BLGK, repeats, axis=2)
    v_BLGK = jnp.repeat(v_BLGK, repeats, axis=2)

  per_head = {}
  for name, value in params.items():
    if getattr(value, "ndim", 0) == 0 or name in ("mask_BHQK", "segment_ids_BL"):
      continue
    if value.shape[:3] != q_BLHK.shape[:3]:
      raise ValueError(
          f"attention parameter {name!r} has shape {value.shape}; under a mesh array "
          f"parameters must have leading dims [B, L, H] = {q_BLHK.shape[:3]}.")
    per_head[name] = value
  static = {n: v for n, v in params.items() if n not in per_head}
  names = tuple(per_head)
  mask = static.pop("mask_BHQK", None)
  segments = static.pop("segment_ids_BL", None)

  def spec_of(ndim):
    return PartitionSpec(_entry(batch_axes), _entry(seq_axes), _entry(head_axes),
                         *([None] * (ndim - 3)))

  seq_axis = _entry(seq_axes)
  return_skipped = static.get("return_skipped", False)
  # [B, H, ...] outputs per device: batch as q, heads split over tensor, then sequence.
  heads_spec = PartitionSpec(_entry(batch_axes), _entry(head_axes + seq_axes), None, None)
  # Under untied a device attends to its heads chunk after chunk: lay the [B, H, ...]
  # arrays out so that its block holds them in that order.
  order = None if chunks == 1 else context_lib.chunk_heads_order(
      q_BLHK.shape[2], tensor, sequence, chunks)

  def seq_to_heads(x):
    return jax.lax.all_to_all(x, seq_axis, split_axis=2, concat_axis=1, tiled=True)

  def attend(local_static, q, k, v, *arrays):
    """Sequence shards in, sequence shards out; whole sequences in between."""
    if mask is not None:
      *arrays, mask_BHQK = arrays
      local_static = {**local_static, "mask_BHQK": mask_BHQK}
    if seq_axes:
      q, k, v = seq_to_heads(q), seq_to_heads(k), seq_to_heads(v)
      arrays = [seq_to_heads(a) for a in arrays]
    o = kernels.attention(q, k, v, kind=kind, impl=impl, causal=causal,
                          **local_static, **dict(zip(names, arrays)))
    o, skipped = o if return_skipped else (o, None)
    if seq_axes:
      o = jax.lax.all_to_all(o, seq_axis, split_axis=1, concat_axis=2, tiled=True)
    return o, skipped

  def local(q, k, v, *arrays):
    local_static = dict(static)
    if segments is not None:
      *arrays, seg_BL = arrays
      # Every device attends over whole sequences: gather the sequence shards.
      local_static["segment_ids_BL"] = (
          jax.lax.all_gather(seg_BL, seq_axis, axis=1, tiled=True) if seq_axes else seg_BL)
    if not context.chunked:
      o, skipped = attend(local_static, q, k, v, *arrays)
    else:  # heads are axis 2 of q, k, v and the [B, L, H] arrays, axis 1 of the mask
      axes = (2,) * (3 + len(names)) + ((1,) if mask is not None else ())
      inputs = [context_lib.to_chunks(x, chunks, a) for x, a in zip((q, k, v, *arrays), axes)]
      o, skipped = context_lib.over_chunks(
          lambda *xs: attend(local_static, *xs), inputs)
      o = context_lib.from_chunks(o, 2)
      skipped = None if skipped is None else context_lib.from_chunks(skipped, 1)
    return (o, skipped) if return_skipped else o

  arrays = [per_head[n] for n in names]
  in_specs = (spec_of(4),) * 3 + tuple(spec_of(a.ndim) for a in arrays)
  if mask is not None:
    # After the all-to-all a device holds heads split over tensor, then sequence.
    arrays.append(mask if order is None else jnp.take(mask, order, axis=1))
    in_specs += (heads_spec,)
  if segments is not None:  # [B, L]: split like q's batch and sequence
    arrays.append(segments)
    in_specs += (PartitionSpec(_entry(batch_axes), seq_axis),)
  # check_vma=False: kernels (pallas_call, custom_vjp) are opaque to the
  # replication checker; every output dim is covered by out_specs anyway.
  out_specs = (spec_of(4), heads_spec) if return_skipped else spec_of(4)
  sharded = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                          check_vma=False)
  out = sharded(q_BLHK, k_BLGK, v_BLGK, *arrays)
  if return_skipped and order is not None:
    o, skipped = out
    return o, jnp.take(skipped, jnp.argsort(order), axis=1)
  return out
