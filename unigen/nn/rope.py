"""2-D rotary position embedding for image tokens (as in LightningDiT / EVA / Flux).

Half of each head's channels rotate with the row index and half with the column index;
pairs are adjacent channels (x[2i], x[2i+1]), the EVA-02 / LightningDiT convention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rope_2d_freqs(head_dim: int, grid_h: int, grid_w: int, *, theta: float = 10000.0) -> np.ndarray:
    """(grid_h*grid_w, head_dim//2) rotation angles for row-major tokens."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    inv = 1.0 / theta ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
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
