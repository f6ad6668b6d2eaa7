"""The compact block-sparse layout that the fast kernels read.

A user hands over a boolean *block map* `[Bm, Hm, nq, nk]` (`Bm` is 1 or the batch,
`Hm` is 1 or the number of heads): entry `(b, h, i, j)` says that query block `i` attends
to key block `j`. Inside a selected pair every query token sees every key token; the map
is block-granular on purpose, like FlexAttention's `BlockMask` and splash attention's
`MaskInfo`, so a kernel never needs a token-level mask except at the padded tail.

The kernels do not want to scan `nk` booleans per query block; they want, per query
block, the *list* of key blocks to visit. `BlockLayout` holds

  kv_indices [Bm, Hm, nq, K] int32  selected key blocks, ascending, padded by repetition
  kv_counts  [Bm, Hm, nq]    int32  how many entries of kv_indices are real
  kv_partial [Bm, Hm, nq, K] bool   True when that key block holds padding tokens (the
                                    last block of a length that is not a multiple of the
                                    block): only those need an element-wise mask
  q_indices / q_counts              the transposed lists (per key block, the query blocks
                                    that read it), used by the dK/dV backward kernels

`K` (`max_kv_blocks`) is static. When the map is concrete it is the largest row count, so
a 90%-sparse map costs 10% of the work; when it is traced (a dynamic top-k inside jit) it
defaults to `nk` unless the caller knows a bound (e.g. the top-k value).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


def normalize_block_size(block_size) -> tuple[int, int]:
    """`block_size` is an int (same for queries and keys) or a `(block_q, block_k)` pair."""
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != 2:
            raise ValueError(f"block_size must be an int or (block_q, block_k); got {block_size!r}")
        bq, bk = int(block_size[0]), int(block_size[1])
    elif block_size is None:
        raise ValueError("block_size is required (e.g. block_size=64)")
    else:
        bq = bk = int(block_size)
    if bq <= 0 or bk <= 0:
        raise ValueError(f"block_size must be positive; got {block_size!r}")
    return bq, bk


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockLayout:
    kv_indices: jax.Array
    kv_counts: jax.Array
    kv_partial: jax.Array
    q_indices: jax.Array
    q_counts: jax.Array
    block_q: int = dataclasses.field(metadata=dict(static=True))
    block_k: int = dataclasses.field(metadata=dict(static=True))
    seq_q: int = dataclasses.field(metadata=dict(static=True))
    seq_k: int = dataclasses.field(metadata=dict(static=True))

    @property
    def num_q_blocks(self) -> int:
        return self.kv_indices.shape[2]

    @property
    def num_kv_blocks(self) -> int:
        return self.q_indices.shape[2]

    @property
    def max_kv_blocks(self) -> int:
        return self.kv_indices.shape[3]

    @property
    def max_q_blocks(self) -> int:
        return self.q_indices.shape[3]

    def to_block_map(self) -> jax.Array:
        """The boolean block map `[Bm, Hm, nq, nk]` this layout encodes."""
        slots = jnp.arange(self.max_kv_blocks)
        valid = slots < self.kv_counts[..., None]
        hot = jax.nn.one_hot(self.kv_indices, self.num_kv_blocks, dtype=jnp.int32)
        return jnp.sum(hot * valid[..., None], axis=-2) > 0

    def check_fits(self, batch: int, heads: int, seq_q: int, seq_k: int) -> None:
        if (self.seq_q, self.seq_k) != (seq_q, seq_k):
            raise ValueError(
                f"block layout was built for Tq={self.seq_q}, Tk={self.seq_k} but the inputs "
                f"have Tq={seq_q}, Tk={seq_k}; rebuild it with block_layout(...)"
            )
        _check_broadcast(self.kv_indices.shape[0], self.kv_indices.shape[1], batch, heads)


def _check_broadcast(bm: int, hm: int, batch: int, heads: int) -> None:
    if bm not in (1, batch) or hm not in (1, heads):
        raise ValueError(
            f"block_mask leading dims ({bm}, {hm}) must be (1 or B={batch}, 1 or H={heads})"
        )


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _lists(block_map: jax.Array, max_len: int | None):
    """Per row of `block_map[..., n]`: ascending selected column ids (padded), counts."""
    n = block_map.shape[-1]
    counts = jnp.sum(block_map, axis=-1, dtype=jnp.int32)
    if max_len is None:
        max_len = int(np.max(np.asarray(counts))) if _is_concrete(counts) and counts.size else n
    max_len = max(1, min(int(max_len), n))
    # A stable sort on "not selected" puts selected columns first, in ascending order.
    order = jnp.argsort(~block_map, axis=-1, stable=True)[..., :max_len].astype(jnp.int32)
    # Pad by repeating the last real index: a GPU kernel that over-fetches re-reads a block
    # it already has in cache instead of a random one. Empty rows point at block 0.
    last = jnp.take_along_axis(order, jnp.maximum(counts - 1, 0)[..., None], axis=-1)
    slots = jnp.arange(max_len, dtype=jnp.int32)
    indices = jnp.where(slots < counts[..., None], order, jnp.where(counts[..., None] > 0, last, 0))
    counts = jnp.minimum(counts, max_len)
    return indices, counts


def block_layout(
    block_mask,
    seq_q: int,
    seq_k: int,
    block_size,
    *,
    max_kv_blocks: int | None = None,
    max_q_blocks: int | None = None,
) -> BlockLayout:
    """Convert a boolean block map `[Bm, Hm, ceil(Tq/bq), ceil(Tk/bk)]` to a `BlockLayout`.

    Rows with more than `max_kv_blocks` selected blocks keep their first `max_kv_blocks`
    (ascending); pass the true bound (the default computes it when the map is concrete).
    """
    bq, bk = normalize_block_size(block_size)
    block_mask = jnp.asarray(block_mask)
    nq, nk = math.ceil(seq_q / bq), math.ceil(seq_k / bk)
    if block_mask.ndim != 4:
        raise ValueError(
            f"block_mask must be a boolean map [B or 1, H or 1, Tq/bq, Tk/bk]; got shape "
            f"{block_mask.shape}"
        )
    if block_mask.shape[2:] != (nq, nk):
        raise ValueError(
            f"block_mask shape {block_mask.shape} does not fit the sequence: with Tq={seq_q}, "
            f"Tk={seq_k} and blocks ({bq}, {bk}) its last two dims must be ({nq}, {nk}) "
            "(ceil(T / block))"
        )
    if block_mask.dtype != jnp.bool_:
        raise ValueError(f"block_mask must be boolean; got dtype {block_mask.dtype}")
    kv_indices, kv_counts = _lists(block_mask, max_kv_blocks)
    q_indices, q_counts = _lists(jnp.swapaxes(block_mask, 2, 3), max_q_blocks)
    # Only the last key block can hold padding; only it needs the element-wise mask.
    kv_partial = (kv_indices == nk - 1) & (seq_k % bk != 0)
    return BlockLayout(
        kv_indices=kv_indices,
        kv_counts=kv_counts,
        kv_partial=kv_partial,
        q_indices=q_indices,
        q_counts=q_counts,
        block_q=bq,
        block_k=bk,
        seq_q=seq_q,
        seq_k=seq_k,
    )


def broadcast_layout(layout: BlockLayout, batch: int, heads: int) -> BlockLayout:
    """Broadcast the `[1 or B, 1 or H]` leading dims of every list to `[B, H]`."""

    def bc(x):
        return jnp.broadcast_to(x, (batch, heads) + x.shape[2:])

    return dataclasses.replace(
        layout,
        kv_indices=bc(layout.kv_indices),
        kv_counts=bc(layout.kv_counts),
        kv_partial=bc(layout.kv_partial),
        q_indices=bc(layout.q_indices),
        q_counts=bc(layout.q_counts),
    )
