"""Builders of boolean block maps `[Bm, Hm, nq, nk]` for block-sparse attention.

* `local_window_block_mask` — static local windows over a 2D/3D token grid, the
  Scale-DiT local branch / sliding-tile attention (STA) idea. `tile_order` reorders tokens
  so every block is a spatial tile (STA), which makes the block windows tight.
* `explicit_block_mask` — validate and shape a user-provided map.
* `topk_block_mask` — dynamic selection from block-pooled q·k scores: keep the top-k key
  blocks per query block, or the smallest set holding a fraction p of the estimated
  attention mass (Sparse VideoGen2's top-p, AdaSpa's blockified dynamic pattern).
* `dense_warmup` — force the dense map in the first denoising steps, where the
  attention pattern is not yet stable (AdaSpa / SVG2 run a few dense steps first).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .layout import normalize_block_size


def _per_dim(value, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) != ndim:
            raise ValueError(f"{name} has {len(value)} entries but the grid has {ndim} dims")
        return tuple(int(v) for v in value)
    return (int(value),) * ndim


def tile_order(grid_shape, tile_shape) -> tuple[np.ndarray, np.ndarray]:
    """Token permutation that groups a raster-ordered grid into contiguous tiles.

    Returns `(perm, inverse)`: `x[:, perm]` puts the tokens of tile 0 first (raster order
    inside the tile), then tile 1, ...; `y[:, inverse]` undoes it. With a tile of
    `block_size` tokens every attention block is one spatial tile (sliding-tile attention).
    """
    grid_shape = tuple(int(g) for g in grid_shape)
    tile_shape = _per_dim(tile_shape, len(grid_shape), "tile_shape")
    if any(g % t for g, t in zip(grid_shape, tile_shape)):
        raise ValueError(f"grid {grid_shape} must be divisible by the tile {tile_shape}")
    ids = np.arange(math.prod(grid_shape)).reshape(grid_shape)
    split = []
    for g, t in zip(grid_shape, tile_shape):
        split += [g // t, t]
    ids = ids.reshape(split)
    nd = len(grid_shape)
    # (n0, t0, n1, t1, ...) -> (n0, n1, ..., t0, t1, ...): tile index outer, in-tile inner.
    ids = ids.transpose([2 * i for i in range(nd)] + [2 * i + 1 for i in range(nd)])
    perm = ids.reshape(-1)
    return perm, np.argsort(perm)


def local_window_block_mask(
    grid_shape,
    window,
    block_size,
    *,
    token_order: np.ndarray | None = None,
) -> np.ndarray:
    """Static block map `[1, 1, nb, nb]` for a local window over a token grid.

    `grid_shape` is `(h, w)` or `(t, h, w)`; tokens are in raster order unless
    `token_order` (e.g. `tile_order(...)[0]`) says which grid token sits at each position.
    Query block i attends to key block j when some token of j lies within `window`
    (a per-dim radius, in grid cells) of some token of i, judged on the blocks' bounding
    boxes. That is a superset of the token-level window (a block pair is all-or-nothing),
    exact when blocks are tiles.
    """
    grid_shape = tuple(int(g) for g in grid_shape)
    if len(grid_shape) not in (2, 3):
        raise ValueError(f"grid_shape must be (h, w) or (t, h, w); got {grid_shape}")
    radius = np.asarray(_per_dim(window, len(grid_shape), "window"))
    bq, bk = normalize_block_size(block_size)
    if bq != bk:
        raise ValueError("local windows use square blocks (self-attention over one grid)")
    n = math.prod(grid_shape)
    order = np.arange(n) if token_order is None else np.asarray(token_order)
    if order.shape != (n,):
        raise ValueError(f"token_order must have {n} entries (the grid size); got {order.shape}")
    coords = np.stack(np.unravel_index(order, grid_shape), axis=-1)  # (n, nd)
    nb = math.ceil(n / bq)
    pad = nb * bq - n
    # Padding rows repeat the last token so they do not widen any bounding box.
    coords = np.concatenate([coords, np.repeat(coords[-1:], pad, axis=0)]).reshape(nb, bq, -1)
    lo, hi = coords.min(axis=1), coords.max(axis=1)  # (nb, nd)
    gap = np.maximum(0, np.maximum(lo[None, :] - hi[:, None], lo[:, None] - hi[None, :]))
    return np.all(gap <= radius, axis=-1)[None, None]


def explicit_block_mask(block_map, *, seq_q: int, seq_k: int, block_size) -> jax.Array:
    """Check a user map and give it the `[Bm, Hm, nq, nk]` rank (2D -> `[1, 1, nq, nk]`,
    3D `[H, nq, nk]` -> `[1, H, nq, nk]`)."""
    bq, bk = normalize_block_size(block_size)
    block_map = jnp.asarray(block_map, dtype=bool)
    while block_map.ndim < 4:
        block_map = block_map[None]
    want = (math.ceil(seq_q / bq), math.ceil(seq_k / bk))
    if block_map.ndim != 4 or block_map.shape[2:] != want:
        raise ValueError(
            f"block map shape {block_map.shape} does not fit Tq={seq_q}, Tk={seq_k} with blocks "
            f"({bq}, {bk}); the last two dims must be {want}"
        )
    return block_map


def _pool(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Mean over each block of tokens: (B, T, H, D) -> (B, H, nb, D), plus valid counts."""
    b, t, h, d = x.shape
    nb = math.ceil(t / block)
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, nb * block - t), (0, 0), (0, 0)))
    counts = jnp.clip(t - jnp.arange(nb) * block, 0, block).astype(jnp.float32)
    pooled = x.reshape(b, nb, block, h, d).sum(axis=2) / counts[None, :, None, None]
    return pooled.transpose(0, 2, 1, 3), counts


def block_scores(q, k, block_size, *, scale: float | None = None) -> jax.Array:
    """Estimated attention mass per block pair, `[B, H, nq, nk]`, rows summing to 1.

    The logit of a key block is the pooled-q · pooled-k score plus log(#tokens), so a block
    of n tokens weighs like n tokens with the pooled logit (the padded tail counts less).
    """
    bq, bk = normalize_block_size(block_size)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qp, _ = _pool(q, bq)
    kp, kcount = _pool(k, bk)
    logits = jnp.einsum("bhid,bhjd->bhij", qp, kp) * scale + jnp.log(kcount)
    return jax.nn.softmax(logits, axis=-1)


def topk_block_mask(
    q,
    k,
    block_size,
    *,
    topk: int | None = None,
    topp: float | None = None,
    scale: float | None = None,
    min_blocks: int = 1,
) -> jax.Array:
    """Dynamic block map `[B, H, nq, nk]` from block-pooled q·k scores.

    `topk`: keep the k highest-scoring key blocks per query block. `topp`: keep the
    smallest set of blocks whose estimated mass reaches p (SVG2). Both: top-p capped at k.
    At least `min_blocks` are kept per row. Works under jit; pass `max_kv_blocks=topk`
    to the attention call so the kernels size their lists to k.
    """
    if topk is None and topp is None:
        raise ValueError("topk_block_mask needs topk=, topp= or both")
    if topp is not None and not 0.0 < topp <= 1.0:
        raise ValueError(f"topp must be in (0, 1]; got {topp}")
    probs = block_scores(q, k, block_size, scale=scale)
    nk = probs.shape[-1]
    order = jnp.argsort(-probs, axis=-1)  # descending
    sorted_p = jnp.take_along_axis(probs, order, axis=-1)
    rank = jnp.arange(nk)
    keep_sorted = jnp.ones(sorted_p.shape, bool)
    if topp is not None:
        before = jnp.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the better blocks
        keep_sorted &= before < topp
    if topk is not None:
        if topk < 1:
            raise ValueError(f"topk must be >= 1; got {topk}")
        keep_sorted &= rank < topk
    keep_sorted |= rank < min_blocks
    # Scatter the decisions back to key-block order.
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(keep_sorted, inverse, axis=-1)


def dense_warmup(block_mask, step, warmup_steps: int) -> jax.Array:
    """The all-True map while `step < warmup_steps`, else `block_mask` (jit-friendly)."""
    block_mask = jnp.asarray(block_mask, dtype=bool)
    return jnp.logical_or(block_mask, jnp.asarray(step) < warmup_steps)
