"""2-D rotary position embedding for image tokens (as in LightningDiT / EVA-02 / Flux).

The convention is EVA-02's `VisionRotaryEmbeddingFast`, which LightningDiT uses with
`dim = head_dim / 2`:
  * frequencies  inv_i = theta^(-i / (head_dim / 4)),  i = 0 .. head_dim/4 - 1
    (EVA writes 1 / theta^(arange(0, dim, 2) / dim) with dim = head_dim / 2: the same);
  * the first half of each head's channels rotates with the row (h) index, the second half
    with the column (w) index (tokens are row-major, as patchify lays them out);
  * each frequency drives one pair of adjacent channels (x[2i], x[2i+1]) (EVA repeats every
    frequency twice, `(n r), r=2`, and `rotate_half` pairs neighbours);
  * positions are arange(n) / n * pt_seq_len (EVA's `ft_seq_len`/`pt_seq_len` rescaling for
    a grid of n tokens trained at pt_seq_len). LightningDiT passes pt_seq_len = n, so the
    positions are the integers 0 .. n-1 (the default here, pt_seq_len=None).

`rope_axes_angles` gives the angles for explicit per-token position ids over any number of
axes (Flux's (id, row, column) triples); `apply_rope` applies both kinds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rope_positions(n: int, pt_seq_len: int | None = None) -> np.ndarray:
    """Positions of n tokens along one axis: integers, or EVA's arange(n) / n * pt_seq_len
    (computed in float32 as the reference does)."""
    if pt_seq_len is None:
        return np.arange(n, dtype=np.float64)
    return (np.arange(n, dtype=np.float32) / np.float32(n) * np.float32(pt_seq_len)).astype(np.float64)


def rope_2d_freqs(head_dim: int, grid_h: int, grid_w: int, *, theta: float = 10000.0,
                  pt_seq_len: int | None = None) -> np.ndarray:
    """(grid_h*grid_w, head_dim//2) rotation angles for row-major tokens: pairs 0 .. head_dim/4-1
    turn with the row, the next head_dim/4 pairs with the column."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    inv = 1.0 / theta ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(rope_positions(grid_h, pt_seq_len), rope_positions(grid_w, pt_seq_len), indexing="ij")
    ang_h = rows.reshape(-1, 1) * inv[None]
    ang_w = cols.reshape(-1, 1) * inv[None]
    return np.concatenate([ang_h, ang_w], axis=1).astype(np.float32)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotate (B, T, H, Dh) by angles (T, Dh/2): pairs (x[2i], x[2i+1]) by angle_i."""
    cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


# ---- multi-axis RoPE over explicit position ids (Flux) ---------------------------------------------
def rope_axes_angles(ids, axes_dims, *, theta: float = 10000.0) -> jax.Array:
    """(L, sum(axes_dims) / 2) rotation angles for L tokens whose positions are given per axis.

    `ids` is (L, n_axes): one position per token and axis (Flux: (0, row, col) for image tokens,
    zeros for text tokens), int or float, concrete or traced. Axis i owns the next axes_dims[i]
    channels of each head, i.e. axes_dims[i] / 2 adjacent pairs (x[2j], x[2j+1]) that `apply_rope`
    turns by angle_j; within axis i pair k turns with frequency theta^(-2k / axes_dims[i]).
    This is diffusers' FluxPosEmbed: get_1d_rotary_pos_embed per axis with use_real=True and
    repeat_interleave_real=True (every frequency drives two neighbouring channels), concatenated
    over the axes, and its apply_rotary_emb with use_real_unbind_dim=-1 (the pairing above).
    The frequencies are computed in float64 (as diffusers does) and rounded once to float32; the
    product with the positions is float32."""
    axes_dims = tuple(int(d) for d in axes_dims)
    if any(d <= 0 or d % 2 for d in axes_dims):
        raise ValueError(f"multi-axis RoPE needs positive even axes_dims, got {axes_dims}")
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != len(axes_dims):
        raise ValueError(f"position ids must be (L, {len(axes_dims)}) for axes_dims={axes_dims}; got {ids.shape}")
    parts = []
    for axis, dim in enumerate(axes_dims):
        inv = (1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)).astype(np.float32)
        parts.append(ids[:, axis].astype(jnp.float32)[:, None] * jnp.asarray(inv)[None])
    return jnp.concatenate(parts, axis=1)
