"""Pure-jnp reference: dense attention under the token mask a block map implies.

Everything is computed (O(Tq·Tk)); this is the ground truth the fast paths are tested
against. Convention shared by every implementation: a query row whose block selects no
key block outputs zeros (and gets zero gradients), instead of softmax's uniform average
over masked logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .layout import BlockLayout


def token_mask(block_map: jax.Array, layout: BlockLayout) -> jax.Array:
    """Expand `[Bm, Hm, nq, nk]` to the token mask `[Bm, Hm, Tq, Tk]` (padding cropped)."""
    m = jnp.repeat(jnp.repeat(block_map, layout.block_q, axis=2), layout.block_k, axis=3)
    return m[:, :, : layout.seq_q, : layout.seq_k]


def masked_softmax_attention(q, k, v, mask, *, scale: float) -> jax.Array:
    """(B, Tq, H, D) attention with a boolean mask broadcastable to (B, H, Tq, Tk)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, -jnp.inf)
    row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.exp(logits - row_max)  # exactly 0 where masked
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0.0, 1.0, denom)  # empty rows stay all-zero
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(jnp.float32))
    return out.astype(q.dtype)


def block_sparse_attention_reference(q, k, v, layout: BlockLayout, *, scale: float) -> jax.Array:
    return masked_softmax_attention(q, k, v, token_mask(layout.to_block_map(), layout), scale=scale)
