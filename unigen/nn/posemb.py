"""Fixed 2-D sin-cos position embedding (MAE / DiT `get_2d_sincos_pos_embed`).

`sincos_2d` is the integer grid of DiT. `scaled_positions` + `sincos_2d_at` give diffusers'
`PatchEmbed` variant (SD3): positions index / (table / base_size) / interpolation_scale, and
any window of that table (SD3 centre-crops a `pos_embed_max_size` table to the input grid).
"""

from __future__ import annotations

import numpy as np


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin(pos * w), cos(pos * w)] with w_i = 1 / 10000^(i / (dim/2))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """(grid_h * grid_w, dim) float32 table for tokens in row-major (h, w) order.

    The reference builds `np.meshgrid(grid_w, grid_h)` and embeds grid[0] into the first
    half of the channels: so the first half encodes the column (w) index and the second
    half the row (h) index, despite the reference's variable names. We match the numbers.
    """
    return sincos_2d_at(dim, np.arange(grid_h), np.arange(grid_w))


def sincos_2d_at(dim: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(len(rows) * len(cols), dim) float32 table for the row-major grid of the given row and
    column positions (any floats); the first half of the channels encodes the column."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.asarray(rows), np.asarray(cols), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return emb.astype(np.float32)


def scaled_positions(table: int, base_size: int, interpolation_scale: float = 1.0) -> np.ndarray:
    """The `table` positions of diffusers' `get_2d_sincos_pos_embed(grid_size=table, base_size,
    interpolation_scale)` along one axis: arange(table) / (table / base_size) / interpolation_scale,
    computed in float32 as torch does (so a table larger than base_size spans [0, base_size))."""
    pos = np.arange(table, dtype=np.float32) / np.float32(table / base_size)
    return pos / np.float32(interpolation_scale)
