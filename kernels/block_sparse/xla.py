"""XLA block-gather path: compute only the selected blocks, in plain jnp.

Per query block i we gather its K selected key/value blocks (`kv_indices`) into a
`(K·bk, D)` panel and run ordinary softmax attention over it, masking the unused list
slots and the padded keys of the tail block. Work is ∝ K/nk of dense attention, so on CPU
(where no custom kernel exists) this is the fast path. jax differentiates it directly:
the gather's transpose is a scatter-add into dK/dV.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .layout import BlockLayout, broadcast_layout


def _blocks(x: jax.Array, block: int, n: int) -> jax.Array:
    """(B, T, H, D) -> zero-padded (B, H, n, block, D)."""
    b, t, h, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, n * block - t), (0, 0), (0, 0)))
    return x.reshape(b, n, block, h, d).transpose(0, 3, 1, 2, 4)


def block_sparse_attention_xla(q, k, v, layout: BlockLayout, *, scale: float) -> jax.Array:
    batch, seq_q, heads, dim = q.shape
    bq, bk = layout.block_q, layout.block_k
    nq, nk, kmax = layout.num_q_blocks, layout.num_kv_blocks, layout.max_kv_blocks
    lay = broadcast_layout(layout, batch, heads)

    qb = _blocks(q * jnp.asarray(scale, q.dtype), bq, nq)  # (B, H, nq, bq, D), pre-scaled
    kb = _blocks(k, bk, nk)  # (B, H, nk, bk, D)
    vb = _blocks(v, bk, nk)
    # Gather per (b, h): kb[b, h, idx[b, h]] -> (B, H, nq, K, bk, D), flattened to one
    # (K·bk, D) panel per query block so both products are plain batched matmuls.
    gather = jax.vmap(jax.vmap(lambda blocks, idx: blocks[idx]))
    kg = gather(kb, lay.kv_indices).reshape(batch, heads, nq, kmax * bk, dim)
    vg = gather(vb, lay.kv_indices).reshape(batch, heads, nq, kmax * bk, dim)

    logits = jnp.einsum("bhnqd,bhnsd->bhnqs", qb, kg, preferred_element_type=jnp.float32)
    # Valid = a real list slot, and (for the padded tail block) a real key position.
    slot_ok = jnp.arange(kmax) < lay.kv_counts[..., None]  # (B, H, nq, K)
    key_pos = lay.kv_indices[..., None] * bk + jnp.arange(bk)  # (B, H, nq, K, bk)
    valid = (slot_ok[..., None] & (key_pos < layout.seq_k)).reshape(batch, heads, nq, 1, kmax * bk)
    logits = jnp.where(valid, logits, -jnp.inf)

    row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.exp(logits - row_max)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bhnqs,bhnsd->bhnqd", p.astype(v.dtype), vg,
                     preferred_element_type=jnp.float32)
    out = out / jnp.where(denom == 0.0, 1.0, denom)  # rows with no block output zeros
    out = out.transpose(0, 2, 3, 1, 4).reshape(batch, nq * bq, heads, dim)[:, :seq_q]
    return out.astype(q.dtype)
