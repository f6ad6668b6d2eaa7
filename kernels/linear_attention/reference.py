"""Pure-jnp reference for ReLU linear attention, written in its quadratic form.

SANA (Xie et al. 2024, Eq. 2): O_i = Σ_j v_j (φ(k_j)·φ(q_i)) / (Σ_j φ(k_j)·φ(q_i) + ε),
φ = ReLU, float32 accumulation. SANA-Video's block-causal variant: query i sees key j iff
chunk(j) ≤ chunk(i) (bidirectional inside a chunk, causal across chunks), plus whatever
the carried state already holds. The fast paths never build the (Tq, Tk) matrix; this
one does, which is what makes it an independent check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .state import LinearState


def linear_attention_reference(q, k, v, state: LinearState, *, chunk_size, eps):
    fq = jax.nn.relu(q.astype(jnp.float32))
    fk = jax.nn.relu(k.astype(jnp.float32))
    v32 = v.astype(jnp.float32)
    scores = jnp.einsum("bqhd,bkhd->bhqk", fq, fk)
    if chunk_size is not None:
        cq = jnp.arange(q.shape[1]) // chunk_size
        ck = jnp.arange(k.shape[1]) // chunk_size
        scores = jnp.where(ck[None, :] <= cq[:, None], scores, 0.0)
    num = jnp.einsum("bhqk,bkhe->bqhe", scores, v32) + jnp.einsum("bqhd,bhde->bqhe", fq, state.kv)
    den = jnp.sum(scores, axis=-1).transpose(0, 2, 1) + jnp.einsum("bqhd,bhd->bqh", fq, state.k_sum)
    out = num / (den[..., None] + eps)
    new_state = LinearState(
        kv=state.kv + jnp.einsum("bkhd,bkhe->bhde", fk, v32),
        k_sum=state.k_sum + jnp.einsum("bkhd->bhd", fk),
    )
    return out.astype(q.dtype), new_state
