"""XLA path for ReLU linear attention: O(T·D²) with einsums, never the (T, T) matrix.

Bidirectional (SANA): one state S = Σ φ(k) vᵀ, z = Σ φ(k) over all keys, then
O = φ(q)S / (φ(q)·z + ε). Block-causal (SANA-Video): per-chunk states, an inclusive
cumulative sum over chunks (chunk c sees chunks ≤ c), then the same read-out per chunk.
Zero-padding the tail chunk is exact because φ(0) = ReLU(0) = 0 adds nothing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .state import LinearState


def linear_attention_xla(q, k, v, state: LinearState, *, chunk_size, eps):
    # Heads-major (B, H, T, D) so every product below is a plain batched matmul on XLA:CPU
    # (about 2x faster than contracting over T in the (B, T, H, D) layout).
    to_bh = lambda x: jnp.swapaxes(x.astype(jnp.float32), 1, 2)
    fq, fk, v32 = jax.nn.relu(to_bh(q)), jax.nn.relu(to_bh(k)), to_bh(v)
    if chunk_size is None:
        kv = state.kv + jnp.einsum("bhkd,bhke->bhde", fk, v32)
        k_sum = state.k_sum + jnp.sum(fk, axis=2)
        num = jnp.einsum("bhqd,bhde->bhqe", fq, kv)
        den = jnp.einsum("bhqd,bhd->bhq", fq, k_sum)
        out = jnp.swapaxes(num / (den[..., None] + eps), 1, 2)
        return out.astype(q.dtype), LinearState(kv, k_sum)

    batch, heads, seq, _ = fq.shape
    n = math.ceil(seq / chunk_size)

    def chunks(x):
        x = jnp.pad(x, ((0, 0), (0, 0), (0, n * chunk_size - seq), (0, 0)))
        return x.reshape(batch, heads, n, chunk_size, x.shape[-1])

    fq, fk, v32 = chunks(fq), chunks(fk), chunks(v32)
    kv_c = jnp.einsum("bhncd,bhnce->bhnde", fk, v32)
    ks_c = jnp.sum(fk, axis=3)
    kv_vis = state.kv[:, :, None] + jnp.cumsum(kv_c, axis=2)  # inclusive: own chunk visible
    ks_vis = state.k_sum[:, :, None] + jnp.cumsum(ks_c, axis=2)
    num = jnp.einsum("bhncd,bhnde->bhnce", fq, kv_vis)
    den = jnp.einsum("bhncd,bhnd->bhnc", fq, ks_vis)
    out = (num / (den[..., None] + eps)).reshape(batch, heads, n * chunk_size, -1)[:, :, :seq]
    return jnp.swapaxes(out, 1, 2).astype(q.dtype), LinearState(kv_vis[:, :, -1], ks_vis[:, :, -1])
