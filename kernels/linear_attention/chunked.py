"""Chunk-parallel driver shared by the Pallas and Triton linear-attention kernels.

The sequence is cut into tiles (the chunks when block-causal). Four tile kernels run
fully in parallel over (batch, head, tile); the only sequential step is a cumulative sum
over the small per-tile states, done in XLA between kernels:

  forward   state kernel:   S_c = φ(K_c)ᵀV_c, z_c = Σφ(K_c)
            XLA:            visible state per query tile (S0 + inclusive cumsum when
                            block-causal; S0 + total when bidirectional); final state
            output kernel:  O_c = φ(Q_c)S_vis / (φ(Q_c)·z_vis + ε), and the denominator
  backward  query kernel:   dN = dO/den, dd = −(dO·O)/den;
                            dQ = 1[q>0] ∘ (dN S_visᵀ + dd z_visᵀ);  G_c = φ(Q_c)ᵀdN, g_c = φ(Q_c)ᵀdd
            XLA:            key-side visible G: dS1 + reverse inclusive cumsum (causal) or
                            dS1 + total; dS0 = dS1 + ΣG_c, dz0 = dz1 + Σg_c
            key kernel:     dK = 1[k>0] ∘ (V G_visᵀ + g_vis), dV = φ(K) G_vis

This derivative of O = N/den with N = φ(q)ᵀS, den = φ(q)·z + ε is exact, so the kernels'
gradients match autodiff of the reference to float32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _visible(per_tile, initial, causal: bool):
    """(B, H, n, ...) per-tile sums -> (visible per tile, total)."""
    total = initial + jnp.sum(per_tile, axis=2)
    if causal:
        return initial[:, :, None] + jnp.cumsum(per_tile, axis=2), total
    return total[:, :, None], total


def _visible_reverse(per_tile, final_cot, causal: bool):
    total = final_cot + jnp.sum(per_tile, axis=2)
    if causal:
        rev = jnp.flip(jnp.cumsum(jnp.flip(per_tile, 2), axis=2), 2)
        return final_cot[:, :, None] + rev, total
    return total[:, :, None], total


def make_linear_attention(kernels):
    """Build `f(q, k, v, kv0, ks0, causal, tile, eps) -> (o, kv1, ks1)` with a custom VJP
    from a `kernels` namespace holding `state`, `output`, `q_grad`, `kv_grad` launchers.
    Inputs must already be padded to a multiple of `tile` (q and k separately)."""

    def forward(q, k, v, kv0, ks0, causal, tile, eps):
        kv_c, ks_c = kernels.state(k, v, tile)
        kv_vis, kv1 = _visible(kv_c, kv0, causal)
        ks_vis, ks1 = _visible(ks_c, ks0, causal)
        o, den = kernels.output(q, kv_vis, ks_vis, tile, eps)
        return (o, kv1, ks1), (q, k, v, o, den, kv_vis, ks_vis)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
    def f(q, k, v, kv0, ks0, causal, tile, eps):
        return forward(q, k, v, kv0, ks0, causal, tile, eps)[0]

    def f_fwd(q, k, v, kv0, ks0, causal, tile, eps):
        return forward(q, k, v, kv0, ks0, causal, tile, eps)

    def f_bwd(causal, tile, eps, res, cot):
        q, k, v, o, den, kv_vis, ks_vis = res
        do, dkv1, dks1 = cot
        dq, g_c, gs_c = kernels.q_grad(q, o, den, do, kv_vis, ks_vis, tile)
        g_vis, dkv0 = _visible_reverse(g_c, dkv1, causal)
        gs_vis, dks0 = _visible_reverse(gs_c, dks1, causal)
        dk, dv = kernels.kv_grad(k, v, g_vis, gs_vis, tile)
        return dq, dk, dv, dkv0, dks0

    f.defvjp(f_fwd, f_bwd)
    return f
